"""Keys API sign throughput per backend, against the raw library operation and a bare aiohttp handler on the same
kind of socket, all in one run. The daemon runs as a separate process (``edgeward run``), as in production."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgeward.keys.client import KeysClient
from edgeward.supervise import running_daemon, stop_daemon

from .load import BARE_SERVER, Client, LoadResult, closed_loop

DIGEST = hashlib.sha256(b"benchmark").digest()


def rate_of(op: Callable[[], Any], seconds: float) -> float:
    for _ in range(50):
        op()
    n, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        for _ in range(20):
            op()
        n += 20
    return n / elapsed


def raw_software(_: dict[str, Any]) -> Callable[[], Any]:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec, utils

    key = ec.generate_private_key(ec.SECP256R1())
    return lambda: key.sign(DIGEST, ec.ECDSA(utils.Prehashed(hashes.SHA256())))


def raw_pkcs11(env: dict[str, Any]) -> Callable[[], Any]:
    import pkcs11
    from pkcs11 import Attribute, KeyType, Mechanism
    from pkcs11.util.ec import encode_named_curve_parameters

    token = pkcs11.lib(env["lib"]).get_token(token_label=env["label"])
    session = token.open(user_pin=env["pin"], rw=True)
    RAW_CLEANUPS.append(session.close)  # the last session closed logs out: the next measurement logs in again
    params = session.create_domain_parameters(
        KeyType.EC, {Attribute.EC_PARAMS: encode_named_curve_parameters("secp256r1")}, local=True)
    _, priv = params.generate_keypair(store=False)
    return lambda: priv.sign(DIGEST, mechanism=Mechanism.ECDSA)


def raw_tpm(env: dict[str, Any]) -> Callable[[], Any]:
    """TPM2_Sign through tpm2-pytss with a loaded key: the library op the backend's hot path wraps."""
    from tpm2_pytss import (
        ESAPI,
        ESYS_TR,
        TPM2_ALG,
        TPM2_RH,
        TPM2_ST,
        TPM2B_DIGEST,
        TPM2B_PUBLIC,
        TPM2B_SENSITIVE_CREATE,
        TPMT_SIG_SCHEME,
        TPMT_TK_HASHCHECK,
    )

    ectx = ESAPI(env["tcti"])
    template = TPM2B_PUBLIC.parse(
        "ecc256:ecdsa-sha256", objectAttributes="userwithauth|sign|fixedtpm|fixedparent|sensitivedataorigin")
    handle = ectx.create_primary(TPM2B_SENSITIVE_CREATE(), template, ESYS_TR.OWNER)[0]
    scheme = TPMT_SIG_SCHEME(scheme=TPM2_ALG.ECDSA)
    scheme.details.any.hashAlg = TPM2_ALG.SHA256
    ticket = TPMT_TK_HASHCHECK(tag=TPM2_ST.HASHCHECK, hierarchy=TPM2_RH.NULL)
    RAW_CLEANUPS.append(lambda: (ectx.flush_context(handle), ectx.close()))
    return lambda: ectx.sign(handle, TPM2B_DIGEST(DIGEST), scheme, ticket)


RAW_CLEANUPS: list[Callable[[], Any]] = []


async def api_load(socket: Path, concurrency: int, seconds: float, client: Client = "aiohttp") -> LoadResult:
    keys = KeysClient(socket)
    handle = await keys.create_key_pair_if_not_exists("bench-key", "ec-p256")
    await keys.close()
    body = {"keyHandle": handle, "algorithm": "ECDSA", "parameters": {"digest": base64.b64encode(DIGEST).decode()}}
    return await closed_loop(socket, "/sign?api-version=2021-05-01", body, concurrency, seconds, client=client)


def bare_load(tmp: Path, concurrency: int, seconds: float, client: Client = "aiohttp") -> LoadResult:
    sock = tmp / "bare.sock"
    proc = subprocess.Popen([sys.executable, "-c", BARE_SERVER, str(sock)], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL)
    try:
        assert proc.stdout is not None
        proc.stdout.readline()  # "ready"
        body = {"keyHandle": "x", "algorithm": "ECDSA", "parameters": {"digest": base64.b64encode(DIGEST).decode()}}
        return asyncio.run(closed_loop(sock, "/sign", body, concurrency, seconds, client=client))
    finally:
        stop_daemon(proc)  # type: ignore[arg-type]


CLIENTS = (1, 16, 64)
GOAL_VS_BARE = {"software": 0.6, "pkcs11": 0.6}  # the TPM's goal is against its raw operation
GOAL_TPM_VS_RAW = 0.9


def one_client_ceiling(bare_per_s: float, raw_per_s: float) -> float:
    """The most API/raw can be with one client: its request waits for a whole HTTP round trip (at least the bare
    handler's) and then the whole operation (at least the raw one), one after the other, so API/raw <= bare / (bare
    + raw). For 0.9 the round trip must take at most a ninth of the operation: true of a hardware TPM (tens of ms
    per signature), not of swtpm (about 1 ms) beside a round trip of about 0.5 ms."""
    return bare_per_s / (bare_per_s + raw_per_s)


def raw_rate_of(kind: str, env: dict[str, Any], seconds: float) -> float:
    raw = {"software": raw_software, "pkcs11": raw_pkcs11, "tpm": raw_tpm}[kind](env)
    try:
        return rate_of(raw, seconds)
    finally:
        while RAW_CLEANUPS:  # release the TPM's object slots (and swtpm's one connection) for the daemon
            RAW_CLEANUPS.pop()()


def run(backends: dict[str, dict[str, Any]], seconds: float,
        clients: tuple[int, ...] = CLIENTS) -> list[dict[str, Any]]:
    """One row per backend and client count. The keys service runs alone (`edgeward serve keys`), as its unit does.
    On a shared machine the load drifts within a run, so each ratio compares neighbours: the bare handler is measured
    right before each API point, at the same client count, and the raw operation before and after the daemon runs
    (their mean; both are in the row). Each point is measured with both load generators (see ``load``): the goal
    column keeps aiohttp's client, as the issue measured it; the lean client's ratio says how far the API is from
    its transport when the generator is not the bound."""
    rows = []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        for kind, env in backends.items():
            raw_before = raw_rate_of(kind, env, seconds)
            config = tmp / f"{kind}.toml"
            config.write_text(env.get("config", ""))
            state = tmp / kind
            points = []
            with running_daemon(["serve", "keys", "-c", str(config), "--state-dir", str(state), "--run-dir",
                                 str(state / "run")], log_path=tmp / f"{kind}.log"):
                sock = state / "run" / "keyd.sock"
                for n in clients:
                    bare = bare_load(tmp, n, seconds)
                    api = asyncio.run(api_load(sock, n, seconds))
                    lean_bare = bare_load(tmp, n, seconds, "lean")
                    lean_api = asyncio.run(api_load(sock, n, seconds, "lean"))
                    points.append((n, bare, api, lean_bare, lean_api))
            raw_after = raw_rate_of(kind, env, seconds)
            raw_rate = (raw_before + raw_after) / 2
            for n, bare, api, lean_bare, lean_api in points:
                goal = f">= {GOAL_VS_BARE[kind]} x bare" if kind in GOAL_VS_BARE else f">= {GOAL_TPM_VS_RAW} x raw"
                met = (api.rate / bare.rate >= GOAL_VS_BARE[kind] if kind in GOAL_VS_BARE
                       else api.rate / raw_rate >= GOAL_TPM_VS_RAW)
                rows.append({"backend": kind, "clients": n, "raw_per_s": raw_rate,
                             "ceiling_vs_raw": one_client_ceiling(bare.rate, raw_rate) if n == 1 else None,
                             "raw_before_after": (raw_before, raw_after), "api_per_s": api.rate,
                             "bare_per_s": bare.rate, "api_vs_raw": api.rate / raw_rate,
                             "api_vs_bare": api.rate / bare.rate, "goal": goal, "met": met,
                             "lean_api_per_s": lean_api.rate, "lean_bare_per_s": lean_bare.rate,
                             "lean_api_vs_bare": lean_api.rate / lean_bare.rate,
                             "lean_api_vs_raw": lean_api.rate / raw_rate,
                             "p50_ms": api.p50_ms, "p99_ms": api.p99_ms,
                             "errors": api.errors + lean_api.errors})
    return rows
