"""aiohttp for the daemon's process, imported without the system CA bundle and the MIME table its import loads.

When ``aiohttp.connector`` is imported it builds its two default client TLS contexts, and each reads the system's
whole CA bundle: 3 MB resident and 60 ms in isolation, 2 MB of what the daemon held at idle.
The daemon does not use them: every outbound TLS connection it makes (EST, DPS, IoT Hub) passes a context of its own,
trusting what its configuration names, or the system store loaded when that connection is set up. The Keylime
registrar is plain HTTP by contract (keylime/settings.py refuses anything else).

The two defaults are therefore left without any trust anchor. A connection that someday forgets to pass its own
context then fails certificate verification: it fails closed, and never silently trusts every public CA.

``aiohttp.web`` also reads the system's MIME types (/etc/mime.types: 0.4 MB and 6 ms) for serving static files, which
the daemon never does; its table is left with Python's built-in types.

Only the daemon's entry calls this, before anything imports aiohttp. A library user who imports edgeward keeps
aiohttp's usual defaults.
"""

from __future__ import annotations

import mimetypes
import ssl
import sys

__all__ = ["import_aiohttp_without_default_trust"]


def import_aiohttp_without_default_trust() -> bool:
    """Import aiohttp (and aiohttp.web) with its default client contexts made empty and the MIME table built in;
    False (and nothing changed) when aiohttp's connector was already imported, so its contexts hold the bundle."""
    if "aiohttp.connector" in sys.modules:
        return False
    load_default, mime_files = ssl.SSLContext.set_default_verify_paths, mimetypes.knownfiles

    def no_default_paths(self: ssl.SSLContext) -> None:
        """aiohttp's two import-time contexts are the only ones made while this is in place."""

    ssl.SSLContext.set_default_verify_paths = no_default_paths  # type: ignore[method-assign]
    mimetypes.knownfiles = []  # read once, by the first MimeTypes(): aiohttp.web_fileresponse's, at its import
    try:
        import aiohttp.connector  # noqa: PLC0415 - imported for its side effect, under the patch
        import aiohttp.web  # noqa: F401, PLC0415
    finally:
        ssl.SSLContext.set_default_verify_paths = load_default  # type: ignore[method-assign]
        mimetypes.knownfiles = mime_files
    return True
