#!/usr/bin/python3 -I
"""Edgeward's command, as the Debian package installs it: Debian's python3 (isolated: no PYTHONPATH, no user site)
with the pinned dependencies the package ships in /usr/lib/edgeward/python, never Debian's dist-packages."""
import sys

sys.path = ["/usr/lib/edgeward/python"] + [p for p in sys.path if "-packages" not in p]

from edgeward.cli.main import main  # noqa: E402

sys.exit(main())
