"""The audit log's view of the TPM's monotonic counter: read it, move it forward, synchronously.

Synchronous because the audit log's append is (the runtime and the integrity monitor call it without awaiting), and
the counter must have moved before the next record is written, not eventually: a lagging counter would let a copy
of the log from inside the lag pass as current. In one process the TPM service is called directly; across processes
its socket is spoken to with a small blocking HTTP client (tpmd is another process, so waiting cannot deadlock).
"""

from __future__ import annotations

import http.client
import json
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from ..http.errors import HttpError

if TYPE_CHECKING:
    from ..tpm.service import TpmService

__all__ = ["AuditCounter", "InProcessCounter", "SocketCounter"]


class AuditCounter(Protocol):
    description: str

    def read(self) -> int | None:
        """The counter's value; None while it was never incremented (or is not defined)."""
        ...

    def increment(self) -> int:
        """Add one; returns the new value."""
        ...


class InProcessCounter:
    def __init__(self, tpm: TpmService) -> None:
        self._tpm = tpm
        self.description = f"TPM NV counter {tpm.settings.audit_counter_index:#x}"

    def read(self) -> int | None:
        return self._tpm.read_audit_counter_now()

    def increment(self) -> int:
        return self._tpm.increment_audit_counter_now()


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


class SocketCounter:
    """The counter through the TPM service's socket. Errors: :class:`HttpError` with the service's message, or
    OSError when the service cannot be reached."""

    def __init__(self, socket_path: str | Path, timeout: float = 30.0) -> None:
        from ..tpm import wire  # noqa: PLC0415 -- loaded with the counter: a device without a TPM has none

        self._path = str(socket_path)
        self._timeout = timeout
        self._version, self._parse = wire.EDGEWARD_VERSION, wire.AuditCounterResponse.parse
        self.description = f"the TPM service's audit counter at {socket_path}"

    def _call(self, method: str, path: str) -> int | None:
        conn = _UnixConnection(self._path, self._timeout)
        try:
            conn.request(method, f"{path}?api-version={self._version}", body=b"" if method == "POST" else None)
            resp = conn.getresponse()
            raw = resp.read()
        finally:
            conn.close()
        if resp.status >= 400:
            try:
                message = str(json.loads(raw)["message"])
            except (ValueError, KeyError, TypeError):
                message = resp.reason
            raise HttpError(message, status=resp.status)
        return self._parse(raw).value

    def read(self) -> int | None:
        return self._call("GET", "/edgeward/audit-counter")

    def increment(self) -> int:
        value = self._call("POST", "/edgeward/audit-counter/increment")
        if value is None:
            raise HttpError("the TPM service answered an increment without the counter's value", status=502)
        return value
