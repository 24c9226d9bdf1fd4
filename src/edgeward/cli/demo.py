"""``edgeward demo``: start a security manager on embedded defaults, use it as a client would, show its status."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import secrets
import sys
import time
from pathlib import Path

import click
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from rich.console import Console
from rich.table import Table

from ..keys.client import KeysClient
from ..keys.model import Aead, EcdsaDigest, HmacSha256, RsaPss
from ..supervise import DaemonFailed, running_daemon

__all__ = ["demo"]

console = Console()


async def _public_key(client: KeysClient, handle: str) -> ec.EllipticCurvePublicKey | rsa.RSAPublicKey:
    algorithm = await client.get_key_pair_public_parameter(handle, "algorithm")
    if algorithm == "ECDSA":
        point = base64.b64decode(await client.get_key_pair_public_parameter(handle, "ec-point"))
        return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point)
    n = int.from_bytes(base64.b64decode(await client.get_key_pair_public_parameter(handle, "rsa-modulus")), "big")
    e = int.from_bytes(base64.b64decode(await client.get_key_pair_public_parameter(handle, "rsa-exponent")), "big")
    return rsa.RSAPublicNumbers(e, n).public_key()


async def _exercise(socket_path: Path) -> Table:
    table = Table(title="Edgeward keys service (embedded defaults: software keys, encrypted at rest)")
    for col in ("key id", "kind", "operation", "result", "ms"):
        table.add_column(col)
    client = KeysClient(socket_path)
    try:
        t = time.perf_counter()
        device = await client.create_key_pair_if_not_exists("demo-device-id", "ec-p256:rsa-2048:*")
        digest = hashlib.sha256(b"hello from the edge").digest()
        sig = await client.sign(device, EcdsaDigest(digest))
        pub = await _public_key(client, device)
        assert isinstance(pub, ec.EllipticCurvePublicKey)
        pub.verify(sig, b"hello from the edge", ec.ECDSA(hashes.SHA256()))
        table.add_row("demo-device-id", "ec-p256", "ECDSA sign, verified", "[green]ok[/green]",
                      f"{(time.perf_counter() - t) * 1000:.1f}")

        t = time.perf_counter()
        ca = await client.create_key_pair_if_not_exists("demo-rsa", "rsa-2048")
        sig = await client.sign(ca, RsaPss(b"message", prehashed=False))
        rpub = await _public_key(client, ca)
        assert isinstance(rpub, rsa.RSAPublicKey)
        rpub.verify(sig, b"message", padding.PSS(padding.MGF1(hashes.SHA256()), padding.PSS.DIGEST_LENGTH),
                    hashes.SHA256())
        table.add_row("demo-rsa", "rsa-2048", "RSA-PSS sign, verified", "[green]ok[/green]",
                      f"{(time.perf_counter() - t) * 1000:.1f}")

        t = time.perf_counter()
        master = await client.create_key_if_not_exists("demo-module-master", "derive,sign")
        derived = await client.create_derived_key(master, b"demo-module:gen1:primary")
        sas = await client.sign(derived, HmacSha256(b"myhub.azure-devices.net%2Fdevices%2Fdemo\n1700000000"))
        table.add_row("demo-module-master", "symmetric", "derived key -> SAS HMAC", "[green]ok[/green]",
                      f"{(time.perf_counter() - t) * 1000:.1f} ({len(sas)}-byte MAC)")

        t = time.perf_counter()
        secret = await client.create_key_if_not_exists("demo-secrets", "encrypt")
        iv, aad = secrets.token_bytes(12), b"demo"
        ct = await client.encrypt(secret, Aead(iv, aad), b"module secret")
        pt = await client.decrypt(secret, Aead(iv, aad), ct)
        assert pt == b"module secret"
        table.add_row("demo-secrets", "symmetric", "AEAD encrypt/decrypt round trip", "[green]ok[/green]",
                      f"{(time.perf_counter() - t) * 1000:.1f}")

        tampered = device.replace("sig=", "sig=A", 1)
        try:
            await client.sign(tampered, EcdsaDigest(digest))
            outcome = "[red]accepted![/red]"
        except Exception as e:
            outcome = f"[green]refused[/green]: {getattr(e, 'status', '?')} {e}"
        table.add_row("demo-device-id", "ec-p256", "forged key handle", outcome, "")
    finally:
        await client.close()
    return table


@click.command()
@click.option("--state-dir", type=click.Path(path_type=Path), default=Path("demo-state"),
              help="Where the demo keeps its keys (default ./demo-state).")
def demo(state_dir: Path) -> None:
    """Start Edgeward on embedded defaults, exercise it over its socket, print the status, stop it."""
    state_dir = state_dir.resolve()
    run_dir = state_dir / "run"
    console.print(f"Starting edgeward (state in {state_dir}) ...")
    try:
        with running_daemon(["run", "--state-dir", str(state_dir), "--run-dir", str(run_dir)],
                            log_path=state_dir / "daemon.log") as proc:
            console.print(f"edgeward is running as pid {proc.pid}; sockets in {run_dir}")
            table = asyncio.run(_exercise(run_dir / "keyd.sock"))
            console.print(table)
            console.print(f"Daemon log: {state_dir / 'daemon.log'}")
    except DaemonFailed as e:
        console.print(f"[red]edgeward failed to start:[/red] {e}")
        sys.exit(1)
    os.environ.pop("NOTIFY_SOCKET", None)
