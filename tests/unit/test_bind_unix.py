"""bind_unix gives a fresh socket its mode without following a path someone else could swap (review of session 11).

The mode used to be set with chmod by path after the bind: whoever can write the socket's directory could put a
symlink there in between and have root chmod the link's target (the reviewer's racer won 0.1% of binds). Each test
makes that swap happen deterministically, right after the bind.
"""

from __future__ import annotations

import socket
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from edgeward.http import server
from edgeward.http.server import UnsafeSocketPath, bind_unix


def _swap_after_bind(monkeypatch: pytest.MonkeyPatch, swap: Callable[[Path], None]) -> None:
    """Sockets made by bind_unix run `swap` on their path as soon as they are bound (the racer's window)."""

    class Swapped(socket.socket):
        def bind(self, address: object) -> None:
            super().bind(address)  # type: ignore[arg-type]
            swap(Path(str(address)))

    monkeypatch.setattr(server.socket, "socket", Swapped)


def test_a_socket_gets_its_mode(tmp_path: Path) -> None:
    path = tmp_path / "d" / "api.sock"
    sock = bind_unix(path, 0o666)
    try:
        mode = path.lstat().st_mode
        assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o666
        with socket.socket(socket.AF_UNIX) as client:
            client.connect(str(path))
    finally:
        sock.close()


def test_a_symlink_swapped_in_after_the_bind_is_refused_and_its_target_keeps_its_mode(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "secret"
    target.write_text("host secret\n")
    target.chmod(0o600)

    def to_symlink(path: Path) -> None:
        path.rename(path.with_name("aside"))
        path.symlink_to(target)

    _swap_after_bind(monkeypatch, to_symlink)
    with pytest.raises(UnsafeSocketPath, match="not the socket"):
        bind_unix(tmp_path / "wl.sock", 0o666)
    assert stat.S_IMODE(target.stat().st_mode) == 0o600


def test_a_file_swapped_in_after_the_bind_is_refused_untouched(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    def to_file(path: Path) -> None:
        path.unlink()
        path.write_text("planted")
        path.chmod(0o600)

    _swap_after_bind(monkeypatch, to_file)
    with pytest.raises(UnsafeSocketPath):
        bind_unix(tmp_path / "a.sock", 0o666)
    assert stat.S_IMODE((tmp_path / "a.sock").stat().st_mode) == 0o600


def test_an_existing_non_socket_is_refused_not_replaced(tmp_path: Path) -> None:
    path = tmp_path / "api.sock"
    path.write_text("keep me")
    with pytest.raises(UnsafeSocketPath, match="not a socket"):
        bind_unix(path, 0o666)
    assert path.read_text() == "keep me"
