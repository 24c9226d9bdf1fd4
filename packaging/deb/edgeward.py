#!/usr/bin/python3 -IS
"""Edgeward's command, as the Debian package installs it: Debian's python3, isolated (no PYTHONPATH, no user site)
and without the site module (no .pth file anywhere runs code in it), with only the standard library and the pinned
dependencies the package ships in /usr/lib/edgeward/python on its path."""
import sys

sys.path = ["/usr/lib/edgeward/python"] + [p for p in sys.path if p.startswith("/usr/lib/python3")]

from edgeward.cli.entry import main  # noqa: E402

sys.exit(main())
