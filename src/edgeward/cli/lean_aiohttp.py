"""aiohttp for the daemon's process, imported without the system CA bundle its import would load.

When ``aiohttp.connector`` is imported it builds its two default client TLS contexts, and each reads the system's
whole CA bundle: about 3 MB resident and 60 ms of start (a third of what ``run`` holds over a bare aiohttp server).
The daemon does not use them: every outbound TLS connection it makes (EST, DPS, IoT Hub) passes a context of its own,
trusting what its configuration names, or the system store loaded when that connection is set up. The Keylime
registrar is plain HTTP by contract (keylime/settings.py refuses anything else).

The two defaults are therefore left without any trust anchor. A connection that someday forgets to pass its own
context then fails certificate verification: it fails closed, and never silently trusts every public CA.

Only the daemon's entry calls this, before anything imports aiohttp. A library user who imports edgeward keeps
aiohttp's usual defaults.
"""

from __future__ import annotations

import ssl
import sys

__all__ = ["import_aiohttp_without_default_trust"]


def import_aiohttp_without_default_trust() -> bool:
    """Import aiohttp with its default client contexts made empty; False (and nothing changed) when aiohttp's
    connector was already imported, so its contexts already hold the bundle."""
    if "aiohttp.connector" in sys.modules:
        return False
    load_default = ssl.SSLContext.set_default_verify_paths

    def no_default_paths(self: ssl.SSLContext) -> None:
        """aiohttp's two import-time contexts are the only ones made while this is in place."""

    ssl.SSLContext.set_default_verify_paths = no_default_paths  # type: ignore[method-assign]
    try:
        import aiohttp.connector  # noqa: F401, PLC0415 - imported for its side effect, under the patch
    finally:
        ssl.SSLContext.set_default_verify_paths = load_default  # type: ignore[method-assign]
    return True
