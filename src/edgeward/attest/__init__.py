"""Caller attestation and integrity monitoring."""
