"""`edgeward -v run` / `edgeward --verbose serve identity` start the same daemon as `edgeward run`, through the click
group (cli/main.py), which imports aiohttp before `run` is known: the entry must still import aiohttp without default
trust first, or a connection that forgot its own context would trust every public CA instead of failing closed (found
by a review of cli/lean_aiohttp.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"

PROBE = textwrap.dedent("""
    import sys
    from edgeward.cli import entry
    sys.argv = ["edgeward", *sys.argv[1:]]
    try:
        entry.main()
    except SystemExit:
        pass
    import aiohttp.connector as connector
    print(connector._SSL_CONTEXT_VERIFIED.cert_store_stats()["x509_ca"])
""")


@pytest.mark.parametrize("argv", [["serve", "--help"], ["-v", "serve", "--help"], ["--verbose", "run", "--help"],
                                  ["-vv", "run", "--help"]], ids=" ".join)
def test_every_daemon_command_line_leaves_aiohttp_defaults_without_trust(argv: list[str]) -> None:
    out = subprocess.run([sys.executable, "-c", PROBE, *argv], env={**os.environ, "PYTHONPATH": str(SRC)},
                         capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.split()[-1] == "0", argv
