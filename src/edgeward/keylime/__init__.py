"""Edgeward as a Keylime agent (pull mode): see :mod:`.service` and the README's Keylime section."""
