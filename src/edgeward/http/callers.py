"""Who a caller is, for the limits: what the kernel and the listening socket vouch for, never what the caller says.

A connection is described by the socket it arrived on (one per module for the workload API) and the peer's
credentials (SO_PEERCRED); a caller key function turns that into the key the connection and request limits count
under. Services choose the key: by socket and uid on shared sockets; on the workload sockets, by the module the caller
is attested as (:func:`by_attested_module`), so whoever else can reach a module's socket counts apart from it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import weakref
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from ..attest.namespaces import is_host_process
from .peercred import Caller, caller_of, peer_credentials

__all__ = [
    "CallerKey",
    "HostCaller",
    "LocalCaller",
    "ModuleCaller",
    "Peer",
    "Strangers",
    "attested_module",
    "by_attested_module",
    "by_socket_and_uid",
    "caller_key_of",
    "describe_caller",
    "in_host_user_namespace",
    "is_host_caller",
    "peer_of",
    "remember_key",
]


log = logging.getLogger(__name__)

_UNATTRIBUTED = Caller(pid=0, uid=-1, gid=-1)
_KEY_BY_CONNECTION: weakref.WeakKeyDictionary[Any, Hashable] = weakref.WeakKeyDictionary()
_module_of: Callable[[Peer], str | None] | None = None  # the module runtime's attestation at accept, once it runs


@dataclass(frozen=True, slots=True)
class Peer:
    """A connection as the kernel describes it: the socket it arrived on (server side) and the process at the
    other end."""

    sockname: Hashable
    caller: Caller


CallerKey = Callable[[Peer], Hashable]


def by_socket_and_uid(peer: Peer) -> Hashable:
    """The caller on a shared socket (keyd, certd, identityd, management): its uid, per socket."""
    return (peer.sockname, peer.caller.uid)


@dataclass(frozen=True, slots=True)
class HostCaller:
    """A caller key proven to be the host's root (or the daemon's own user): counted apart from every module, even
    one whose processes are also uid 0 on the same socket, and allowed the connections reserved for the host."""

    key: Hashable


@dataclass(frozen=True, slots=True)
class ModuleCaller:
    """A caller attested as a module, on a socket that serves modules: every process of the module, whatever its
    uid, so a module that is root in its container cannot multiply its share by switching uids."""

    sockname: Hashable
    module: str


@dataclass(frozen=True, slots=True)
class LocalCaller:
    """A caller of a socket that serves modules that is not attested as a module it may act as there: counted per
    uid. ``host``: root or the daemon's uid in the host's namespaces (which may read the public routes), held to the
    per-caller cap; anyone else is a stranger, who will only ever be refused and gets a few connections to read
    that on."""

    sockname: Hashable
    uid: int
    host: bool = False


@dataclass(frozen=True, slots=True)
class Strangers:
    """Every caller of a socket that is neither the host nor a module (a local user on a module's socket; anyone
    in a user namespace that is neither the host's nor a module's): one key, so however many uids they are (a user
    with a subordinate uid range is thousands), together they hold one small share of the socket."""

    sockname: Hashable


def by_attested_module(module_of: Callable[[Peer], str | None]) -> CallerKey:
    """The key of a socket that serves modules: the module ``module_of`` attests the peer as (None: none it may act
    as on this socket), else the peer's uid, host or stranger. Never the host's reserve: a module's socket is not
    where the host's operator and agents need to get in.

    ``module_of`` also becomes the process's attestation at accept for its shared sockets (:func:`attested_module`).
    """
    global _module_of
    _module_of = module_of

    def key(peer: Peer) -> Hashable:
        module = module_of(peer)
        if module is not None:
            return ModuleCaller(peer.sockname, module)
        return LocalCaller(peer.sockname, peer.caller.uid, is_host_caller(peer.caller))

    return key


def attested_module(peer: Peer) -> str | None:
    """The module the module runtime attests a peer as at accept (None: none, no runtime in this process, or an
    attestation that failed: the caller then counts with the strangers, never refused for it)."""
    if _module_of is None:
        return None
    try:
        return _module_of(peer)
    except Exception:
        log.debug("cannot attest %s at accept", peer, exc_info=True)
        return None


def _uid_map(pid: int | str) -> bytes | None:
    try:
        fd = os.open(f"/proc/{pid}/uid_map", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return os.read(fd, 4096)
    except OSError:
        return None
    finally:
        os.close(fd)


_OWN_UID_MAP = _uid_map("self")


def in_host_user_namespace(caller: Caller) -> bool:
    """Whether the caller's user namespace is this daemon's (the host's): the only way for one user to be many uids
    is a user namespace of its own (``unshare --user --map-auto`` over a subordinate range). Read from
    /proc/<pid>/uid_map, which anyone may read and which shows a namespace's mapping as its reader's namespace
    sees it: the identity map only for the reader's own. Unreadable (gone, or no peer): not the host's."""
    return caller.pid > 0 and _OWN_UID_MAP is not None and _uid_map(caller.pid) == _OWN_UID_MAP


def is_host_caller(caller: Caller) -> bool:
    """True only for root or the daemon's uid in the host's pid and mount namespaces; a container's root, or a
    caller whose namespaces cannot be read, is not the host (fail closed)."""
    return caller.pid > 0 and caller.uid in (0, os.getuid()) and is_host_process(caller.pid)


def describe_caller(key: Hashable) -> str:
    """A caller key in words, for refusals and logs."""
    if isinstance(key, ModuleCaller):
        return f"module {key.module} on {key.sockname}"
    if isinstance(key, LocalCaller):
        return f"{'host ' if key.host else ''}uid {key.uid} on {key.sockname}, not attested as a module served there"
    if isinstance(key, HostCaller):
        return f"host {describe_caller(key.key)}"
    if isinstance(key, Strangers):
        return f"the callers on {key.sockname} that are neither the host nor a module"
    if isinstance(key, int):
        return f"uid {key}"
    if isinstance(key, tuple) and len(key) == 2 and isinstance(key[1], int):
        return f"uid {key[1]} on {key[0]}"
    if isinstance(key, tuple) and len(key) == 1:
        return f"the callers on {key[0]}"
    return str(key)


def _sockname(value: Any) -> Hashable:
    if isinstance(value, bytes):  # abstract or unnamed Unix sockets
        return value.decode(errors="replace")
    if isinstance(value, list):
        return tuple(value)
    return value if isinstance(value, Hashable) else repr(value)


def peer_of(transport: asyncio.BaseTransport) -> Peer:
    sock = transport.get_extra_info("socket")
    caller = _UNATTRIBUTED
    if sock is not None and getattr(sock, "family", None) == socket.AF_UNIX:
        try:
            caller = peer_credentials(sock)
        except OSError:
            caller = _UNATTRIBUTED  # no kernel-vouched identity: counted with every other unattributed caller
    return Peer(_sockname(transport.get_extra_info("sockname")), caller)


def remember_key(transport: asyncio.BaseTransport, key: Hashable) -> None:
    """The key a connection was admitted under, so its requests are limited under the same one."""
    _KEY_BY_CONNECTION[transport] = key


def caller_key_of(request: web.Request, key: CallerKey) -> Hashable:
    """The key a request's limits are counted under; the same one its connection was admitted under, worked out
    once per connection (a connection's socket and peer never change)."""
    transport = request.transport
    if transport is None:
        return key(Peer(None, caller_of(request)))
    known = _KEY_BY_CONNECTION.get(transport)
    if known is None:
        known = _KEY_BY_CONNECTION[transport] = key(
            Peer(_sockname(transport.get_extra_info("sockname")), caller_of(request)))
    return known
