"""``[edgeward.keylime]``: Edgeward as a Keylime agent (pull mode, API 2.1-2.6).

Every default is the safe one: mTLS is always on (there is no setting to turn it off), a revocation notice is
recorded and nothing more unless ``revocation_action`` says otherwise, and a kernel that runs IMA (and so owns
PCR 10) makes the agent refuse to start rather than mix two lists in one PCR. ``stop_modules`` needs
``revocation_cert``: a certificate only a payload delivered is no evidence (any client of the verifier's CA can post
one), so without it notices are recorded and never acted on, and the configuration check says so; it says so too
when ``revocation_cert`` is a tenant CA and no enrolment has delivered the notifier certificate it issued.
``verifier_utc_offset``: the verifier's local time zone, which Keylime dates notices in (default UTC).
"""

from __future__ import annotations

import ipaddress
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from ..config.problems import Problems

__all__ = ["DEFAULT_AK_HANDLE", "KeylimeSettings", "RevocationAction", "parse_keylime_settings"]

RevocationAction = Literal["record", "stop_modules"]
DEFAULT_AK_HANDLE = 0x81_00_4B_41  # the owner's persistent range; clear of the SRK (…01) and the DPS key (…0100)
DEFAULT_PORT = 9002  # the Keylime agent's usual port
_KNOWN = {"registrar_url", "agent_uuid", "listen_address", "listen_port", "contact_address", "verifier_ca",
          "state_dir", "hash_alg", "ak_algorithm", "ak_handle", "revocation_action", "revocation_cert",
          "ima_securityfs", "verifier_utc_offset", "verifier_addresses"}
_UUID = re.compile(r"^[0-9a-fA-F-]{36}$")
BROAD_NETWORK = 256  # verifier_addresses covering more addresses than a /24, IPv4 and IPv6 counted together: warned of


@dataclass(frozen=True)
class KeylimeSettings:
    registrar_url: str  # the registrar's plain-HTTP agent port, e.g. http://registrar:8890
    verifier_ca: Path  # the verifier's CA (its cv_ca/cacert.crt): every client of the agent API must chain to it
    state_dir: Path  # AK record, mTLS key and certificate, payload key, measurement-list journal, stored payloads
    agent_uuid: str | None = None  # None: derived from the EK, so the same TPM always registers as the same agent
    listen_address: str = "127.0.0.1"
    listen_port: int = DEFAULT_PORT
    contact_address: str | None = None  # what the registrar tells the verifier; default: listen_address
    hash_alg: str = "sha256"  # the PCR bank quoted and replayed
    ak_algorithm: Literal["rsa", "ecc"] = "rsa"  # the tenant accepts rsassa by default, ecdsa only if configured
    ak_handle: int = DEFAULT_AK_HANDLE
    revocation_action: RevocationAction = "record"
    # the RevocationNotifier certificate the verifier signs notices with, or the tenant CA that issued it (the
    # payload's certificate then counts only if that CA issued it); None: no notice is ever acted on
    revocation_cert: Path | None = None
    ima_securityfs: Path = Path("/sys/kernel/security/ima")  # where a kernel that runs IMA shows its list
    # minutes east of UTC of the verifier's clock: Keylime dates notices in its local time with no zone (revocation.py)
    verifier_utc_offset: int = 0
    # the verifier's addresses (IPs or CIDRs): TLS handshake slots are kept for them even before their first quote
    verifier_addresses: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()

    @property
    def contact(self) -> str:
        return self.contact_address or self.listen_address


def _path(p: Problems, table: Mapping[str, Any], key: str, default: Path | None) -> Path | None:
    raw = p.get(table, key, "edgeward.keylime", str, "")
    if not raw:
        return default
    path = Path(raw.removeprefix("file://"))
    if not path.is_absolute():
        p.add(f"edgeward.keylime.{key}", raw, "an absolute path")
        return default
    return path


def parse_keylime_settings(table: Mapping[str, Any], state_dir: Path, problems: Problems) -> KeylimeSettings | None:
    """None when the table is absent or broken (the problems say why)."""
    p = problems
    p.warn_unknown(table, _KNOWN, "edgeward.keylime")
    where = "edgeward.keylime"
    url = p.get(table, "registrar_url", where, str, "")
    split = urlsplit(url)
    if split.scheme != "http" or not split.hostname:
        p.add(f"{where}.registrar_url", url or "<missing>",
              "the registrar's agent URL, http://host:port (its plain-HTTP port; the agent proves itself to it "
              "with the TPM, not with TLS)")
    ca = _path(p, table, "verifier_ca", None)
    if ca is None:
        p.add(f"{where}.verifier_ca", "<missing>", "the verifier's CA certificate (cv_ca/cacert.crt): the agent "
              "API admits only clients whose certificate chains to it")
    agent_uuid = p.get(table, "agent_uuid", where, str, "") or None
    if agent_uuid is not None:
        try:
            agent_uuid = str(uuid.UUID(agent_uuid)) if _UUID.match(agent_uuid) else None
        except ValueError:
            agent_uuid = None
        if agent_uuid is None:
            p.add(f"{where}.agent_uuid", table.get("agent_uuid"), "a UUID (or leave it out: derived from the EK)")
    address = p.get(table, "listen_address", where, str, "127.0.0.1")
    contact = p.get(table, "contact_address", where, str, "") or None
    for key, value in (("listen_address", address), ("contact_address", contact)):
        if value is not None:
            try:
                ipaddress.ip_address(value)
            except ValueError:
                p.add(f"{where}.{key}", value, "an IP address")
    port = p.get(table, "listen_port", where, int, DEFAULT_PORT)
    if not 1 <= port <= 65535:
        p.add(f"{where}.listen_port", port, "a TCP port")
    hash_alg = p.get(table, "hash_alg", where, str, "sha256")
    if hash_alg != "sha256":
        p.add(f"{where}.hash_alg", hash_alg, '"sha256" (the only bank the measurement list is extended into)')
    ak_alg = p.get(table, "ak_algorithm", where, str, "rsa")
    if ak_alg not in ("rsa", "ecc"):
        p.add(f"{where}.ak_algorithm", ak_alg, '"rsa" (RSASSA, accepted by a default tenant) or "ecc" (ECDSA)')
        ak_alg = "rsa"
    ak_handle = p.get(table, "ak_handle", where, int, DEFAULT_AK_HANDLE)
    if not 0x81_00_00_02 <= ak_handle <= 0x81_7F_FF_FF:
        p.add(f"{where}.ak_handle", ak_handle, "an owner persistent handle, 0x81000002 to 0x817fffff")
    action = p.get(table, "revocation_action", where, str, "record")
    if action not in ("record", "stop_modules"):
        p.add(f"{where}.revocation_action", action,
              '"record" (write verified notices to the audit log) or "stop_modules" (also stop every module when a '
              "verified notice revokes this device)")
        action = "record"
    revocation_cert = _path(p, table, "revocation_cert", None)
    if action == "stop_modules" and revocation_cert is None:
        p.warnings.append(
            f'{where}.revocation_action: "stop_modules" has no effect without {where}.revocation_cert (the tenant\'s '
            "RevocationNotifier certificate, or the CA in its --cert directory): revocation notices are recorded as "
            "unverified and never acted on, since any client of the verifier's CA could deliver a payload "
            "certificate")
    verifiers = _networks(p, table, "verifier_addresses")
    home = _path(p, table, "state_dir", state_dir / "keylime")
    assert home is not None
    offset = _revocation_checks(p, table, revocation_cert, home)
    if ca is None or split.scheme != "http":
        return None
    return KeylimeSettings(
        registrar_url=url.rstrip("/"), verifier_ca=ca, state_dir=home, agent_uuid=agent_uuid,
        listen_address=address, listen_port=port, contact_address=contact, hash_alg=hash_alg,
        ak_algorithm="ecc" if ak_alg == "ecc" else "rsa", ak_handle=ak_handle,
        revocation_action="stop_modules" if action == "stop_modules" else "record",
        revocation_cert=revocation_cert,
        ima_securityfs=_path(p, table, "ima_securityfs", Path("/sys/kernel/security/ima")) or Path(),
        verifier_utc_offset=offset, verifier_addresses=verifiers)


def _revocation_checks(p: Problems, table: Mapping[str, Any], cert: Path | None, home: Path) -> int:
    """``verifier_utc_offset`` (minutes), and the warning for a tenant CA with no notifier certificate delivered."""
    from .revocation import parse_utc_offset, undelivered_warning  # noqa: PLC0415 -- cryptography, only if used

    raw = table.get("verifier_utc_offset", 0)
    offset = parse_utc_offset(raw)
    if offset is None:
        p.add("edgeward.keylime.verifier_utc_offset", raw,
              '"+HH:MM" or "-HH:MM", or minutes (the verifier\'s local time, which Keylime dates notices in, '
              "east of UTC; -12:00 to +14:00)")
    warning = undelivered_warning(cert, home)
    if warning is not None:
        p.warnings.append(warning)
    return offset or 0


def _networks(p: Problems, table: Mapping[str, Any], key: str,
              ) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    raw = table.get(key, [])
    if not isinstance(raw, list) or not all(isinstance(v, str) for v in raw):
        p.add(f"edgeward.keylime.{key}", raw, 'a list of IP addresses or networks, e.g. ["192.0.2.10", "10.1.0.0/24"]')
        return ()
    nets = []
    for value in raw:
        try:
            nets.append(ipaddress.ip_network(value, strict=False))
        except ValueError:
            p.add(f"edgeward.keylime.{key}", value, "an IP address or network (CIDR)")
    # Every address listed is trusted with the handshake slots kept for verifiers (keylime/listener.py): this many
    # hands them to whoever floods from among them. Counted over the list, so a /16 spelled as 256 /24s counts too.
    covered = sum(n.num_addresses for n in ipaddress.collapse_addresses([n for n in nets if n.version == 4])) + sum(
        n.num_addresses for n in ipaddress.collapse_addresses([n for n in nets if n.version == 6]))
    if covered > BROAD_NETWORK:
        wide = ", ".join(str(n) for n in nets if n.num_addresses > 1)
        p.warnings.append(f"edgeward.keylime.{key}: {wide} cover {covered:,} addresses, each given the handshake "
                          "slots kept for the verifier, so a flood from any of them can keep the verifier out; list "
                          "the verifier's own addresses")
    return tuple(nets)
