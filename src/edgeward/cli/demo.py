"""``edgeward demo``: start a security manager on embedded defaults, use it as a client would, show its status."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import os
import secrets
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import click
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID
from rich.console import Console
from rich.table import Table
from rich.text import Text

from ..certs.client import CertsClient
from ..certs.x509sign import handle_public_key, sign_csr
from ..http.client import UnixClient
from ..http.errors import HttpError
from ..keys.client import KeysClient
from ..keys.model import Aead, EcdsaDigest, HmacSha256, RsaPss
from ..runtime import demo_module
from ..runtime.identities import module_key_handle
from ..runtime.mgmt_client import ManagementClient
from ..supervise import DaemonFailed, running_daemon, sigterm_as_interrupt
from .output_file import write_output
from .status import collect_status, render_status
from .terminal_text import cell

__all__ = ["demo"]

console = Console(emoji=False)
DEMO_MODULE = "demo-module"


async def _exercise(socket_path: Path) -> Table:
    table = Table(title="Edgeward on embedded defaults: software keys (encrypted at rest), local CA")
    for col in ("key id", "kind", "operation", "result", "ms"):
        table.add_column(col)
    client = KeysClient(socket_path)
    try:
        t = time.perf_counter()
        device = await client.create_key_pair_if_not_exists("demo-device-id", "ec-p256:rsa-2048:*")
        digest = hashlib.sha256(b"hello from the edge").digest()
        sig = await client.sign(device, EcdsaDigest(digest))
        pub = await handle_public_key(client, device)
        assert isinstance(pub, ec.EllipticCurvePublicKey)
        pub.verify(sig, b"hello from the edge", ec.ECDSA(hashes.SHA256()))
        table.add_row("demo-device-id", "ec-p256", "ECDSA sign, verified", "[green]ok[/green]",
                      f"{(time.perf_counter() - t) * 1000:.1f}")

        t = time.perf_counter()
        rsa_handle = await client.create_key_pair_if_not_exists("demo-rsa", "rsa-2048")
        sig = await client.sign(rsa_handle, RsaPss(b"message", prehashed=False))
        rpub = await handle_public_key(client, rsa_handle)
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

        t = time.perf_counter()
        certs = CertsClient(socket_path.with_name("certd.sock"))
        try:
            server_chain = x509.load_pem_x509_certificates(
                (await certs.get_cert("edgeward-device-server")).encode())
            module_handle = await client.create_key_pair_if_not_exists("demo-module-server", "ec-p256")
            module_public = await handle_public_key(client, module_handle)
            csr = await sign_csr(
                x509.CertificateSigningRequestBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "demo-module")]))
                .add_extension(x509.SubjectAlternativeName([x509.DNSName("demo-module.local")]), critical=False),
                client, module_handle, module_public)
            ca_handle = await client.load_key_pair("edgeward-local-ca")
            pem = await certs.create_cert("demo-module-server", csr.public_bytes(serialization.Encoding.PEM),
                                          ("edgeward-local-ca", ca_handle))
            leaf, ca = x509.load_pem_x509_certificates(pem.encode())
            leaf.verify_directly_issued_by(ca)
            server_chain[0].verify_directly_issued_by(ca)
        finally:
            await certs.close()
        table.add_row("edgeward-local-ca", "certificate", "local CA", "[green]ok[/green]",
                      f"expires {ca.not_valid_after_utc:%Y-%m-%d}")
        table.add_row("edgeward-device-server", "certificate", "issued at start, renews at 80% with a new key",
                      "[green]ok[/green]", f"expires {server_chain[0].not_valid_after_utc:%Y-%m-%d}")
        table.add_row("demo-module-server", "certificate", "CSR signed in keyd, issued by the local CA, verified",
                      "[green]ok[/green]", f"{(time.perf_counter() - t) * 1000:.1f}")

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


def _demo_module_config(state_dir: Path) -> dict[str, Any]:
    """The demo module runs as the demo's user; as root, as `nobody` with the system's python3 (the demo module
    needs only the standard library): the daemon runs no host module as root unless
    allow_elevated_docker_permissions is on, and this interpreter and this file may be where other users cannot
    read them (a copy goes next to the state directory, which the demo module must reach anyway)."""
    if os.geteuid() != 0:
        return {"image": sys.executable, "createOptions": {"Cmd": [demo_module.__file__]}}
    script = state_dir / "demo_module.py"
    # a new file renamed into place: the state directory may be under a directory another user owns (./demo-state)
    write_output(script, Path(demo_module.__file__).read_bytes(), mode=0o644, exact_mode=True)
    python = shutil.which("python3", path="/usr/bin:/bin") or sys.executable
    return {"image": python, "createOptions": {"Cmd": [str(script)], "User": "nobody"}}


async def _demo_module(run_dir: Path, state_dir: Path) -> tuple[Table, list[Table | Text]]:
    """Deploy the demo module through the management API, watch it use the workload API, check its answers."""
    table = Table(title="demo module: what a module does at start, through the workload API")
    for col in ("step", "answer", "checked"):
        table.add_column(col)
    mgmt = ManagementClient(run_dir / "mgmt" / "mgmt.sock")
    keys = KeysClient(run_dir / "keyd.sock")
    try:
        with contextlib.suppress(HttpError):
            await mgmt.delete_module(DEMO_MODULE)  # a fresh run shows the whole flow
        await mgmt.create_module({"name": DEMO_MODULE, "imagePullPolicy": "never",
                                  "config": _demo_module_config(state_dir)})
        await mgmt.action(DEMO_MODULE, "start")
        results: list[dict[str, Any]] = []
        with console.status("demo module running ..."):
            async with asyncio.timeout(60):
                buffer = b""
                async for chunk in mgmt.logs(DEMO_MODULE, follow=True):
                    buffer += chunk.data
                    lines = buffer.split(b"\n")
                    buffer = lines.pop()
                    results += [json.loads(line[5:]) for line in lines if line.startswith(b"DEMO ")]
                    if any(line.strip() == b"DEMO-DONE" for line in lines):
                        break
        bundle: list[x509.Certificate] = []
        for r in results:
            ok, body = r["status"] < 300, r["body"] or {}
            detail = f"{r['status']}"
            checked = "[red]failed[/red]"
            if ok and r["step"] == "trust bundle":
                bundle = x509.load_pem_x509_certificates(body["certificate"].encode())
                detail, checked = f"{len(bundle)} CA(s): {bundle[-1].subject.rfc4514_string()}", "[green]ok[/green]"
            elif ok and r["step"].endswith("certificate"):
                chain = x509.load_pem_x509_certificates(body["certificate"].encode())
                chain[0].verify_directly_issued_by(chain[1])
                trusted = bundle and chain[-1].public_bytes(serialization.Encoding.DER) in {
                    b.public_bytes(serialization.Encoding.DER) for b in bundle}
                detail = f"{chain[0].subject.rfc4514_string()}, expires {chain[0].not_valid_after_utc:%Y-%m-%d %H:%M}"
                checked = "[green]chains to the trust bundle[/green]" if trusted else "[red]untrusted[/red]"
            elif ok and r["step"] == "SAS token signature":
                gen = next(i["generationId"] for i in await mgmt.identities() if i["moduleId"] == DEMO_MODULE)
                key = await keys.export_derived_key(await module_key_handle(keys, DEMO_MODULE, gen))
                token = r["token"]
                expected = hmac.new(key, f"{token['sr']}\n{token['se']}".encode(), hashlib.sha256).digest()
                good = base64.b64decode(body["digest"]) == expected
                detail = f"SharedAccessSignature sr={token['sr'][:28]}...&se={token['se']}"
                checked = "[green]signature verifies with the module key[/green]" if good else "[red]bad[/red]"
            elif not ok:
                detail = f"{r['status']} {body.get('message', '')}"
            table.add_row(cell(r["step"]), cell(detail), checked)  # the module's own words: text, not markup
        identityd = UnixClient(run_dir / "identityd.sock", "2020-09-01")
        try:
            _, raw = await identityd.request("POST", "/identities/modules", {
                "type": "local", "moduleId": "demo-host-agent",
                "localIdOpts": {"type": "x509", "attributes": "client"}})
            local = json.loads(raw)["spec"]["auth"]
            leaf = x509.load_pem_x509_certificates(local["certificate"].encode())[0]
            table.add_row("local identity (identityd, for a host agent)",
                          f"{leaf.subject.rfc4514_string()}, expires {leaf.not_valid_after_utc:%Y-%m-%d}",
                          "[green]ok[/green]")
        finally:
            await identityd.close()
    finally:
        await keys.close()
        await mgmt.close()
    status = await collect_status(run_dir, state_dir)
    return table, render_status(status)


@click.command()
@click.option("--state-dir", type=click.Path(path_type=Path), default=Path("demo-state"),
              help="Where the demo keeps its keys (default ./demo-state).")
def demo(state_dir: Path) -> None:
    """Start Edgeward on embedded defaults, deploy a demo module, show what it did and the device's status."""
    state_dir = state_dir.resolve()
    run_dir = state_dir / "run"
    state_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(state_dir, 0o755)  # noqa: S103 -- the demo module (any uid) reaches its socket under it
    console.print(f"Starting edgeward (state in {state_dir}) ...")
    # Ctrl-C, SIGTERM or a closed terminal at any point: the daemon is stopped (and stops the demo module) before
    # the demo exits, so nothing it started keeps running.
    try:
        with sigterm_as_interrupt(), running_daemon(
                ["run", "--state-dir", str(state_dir), "--run-dir", str(run_dir)],
                log_path=state_dir / "daemon.log") as proc:
            console.print(f"edgeward is running as pid {proc.pid}; sockets in {run_dir}")
            console.print(asyncio.run(_exercise(run_dir / "keyd.sock")))
            module_table, status = asyncio.run(_demo_module(run_dir, state_dir))
            console.print(module_table)
            for item in status:
                console.print(item)
            console.print(f"Daemon log: {state_dir / 'daemon.log'}")
    except DaemonFailed as e:
        console.print(f"[red]edgeward failed to start:[/red] {e}")
        sys.exit(1)
    except (HttpError, TimeoutError) as e:
        console.print(f"[red]demo failed:[/red] {getattr(e, 'message', e) or 'the demo module did not finish'}")
        sys.exit(1)
    except KeyboardInterrupt:
        console.print("interrupted: edgeward and the demo module are stopped")
        sys.exit(130)
    os.environ.pop("NOTIFY_SOCKET", None)
