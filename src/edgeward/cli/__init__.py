"""The ``edgeward`` command."""
