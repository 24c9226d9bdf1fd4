"""Edgeward: the security manager of an IoT edge device."""

__version__ = "0.1.0"
