"""The registrar's agent endpoints (API 2.6, plain HTTP: the agent proves itself with the TPM, not with TLS).

``POST /v2.6/agents/{uuid}`` with the EK and AK answers a MakeCredential blob; the agent recovers its secret with
TPM2_ActivateCredential and answers ``POST .../activate`` with HMAC-SHA384(key=base64(secret), uuid). A wrong tag
makes the registrar delete the agent, and a known UUID with another EK or AK is refused (403) until an operator
runs ``keylime_tenant -c regdelete``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import struct
from dataclasses import dataclass
from typing import Any

import aiohttp

__all__ = ["API_VERSION", "Challenge", "RegistrarError", "activate", "auth_tag", "register"]

API_VERSION = "2.6"
_BLOB_MAGIC, _BLOB_VERSION = 0xBADCC0DE, 1
_TIMEOUT = aiohttp.ClientTimeout(total=30)


class RegistrarError(RuntimeError):
    def __init__(self, message: str, *, refused: bool = False) -> None:
        super().__init__(message)
        self.refused = refused  # the registrar knows this UUID with another EK or AK: retrying cannot help


@dataclass(frozen=True)
class Challenge:
    credential: bytes  # TPM2B_ID_OBJECT, with its size
    secret: bytes  # TPM2B_ENCRYPTED_SECRET, with its size


def parse_blob(blob: bytes) -> Challenge:
    """tpm2-tools' makecredential file: magic, version, then the two TPM2B structures."""
    if len(blob) < 12 or struct.unpack_from(">II", blob) != (_BLOB_MAGIC, _BLOB_VERSION):
        raise RegistrarError("the registrar's challenge is not a tpm2-tools credential blob")
    (n,) = struct.unpack_from(">H", blob, 8)
    credential = blob[8:10 + n]
    (m,) = struct.unpack_from(">H", blob, 10 + n)
    secret = blob[10 + n:12 + n + m]
    if len(credential) != n + 2 or len(secret) != m + 2:
        raise RegistrarError("the registrar's challenge is truncated")
    return Challenge(credential, secret)


def auth_tag(secret: bytes, agent_uuid: str) -> str:
    return hmac.new(base64.b64encode(secret), agent_uuid.encode(), hashlib.sha384).hexdigest()


async def _post(url: str, body: dict[str, Any]) -> dict[str, Any]:
    try:
        # a redirect is not followed: the registrar's agent port is plain HTTP, and a hop elsewhere would be anyone's
        async with aiohttp.ClientSession(timeout=_TIMEOUT) as session, session.post(
                url, json=body, allow_redirects=False) as response:
            text = await response.text()
            if response.status == 403:
                raise RegistrarError(
                    f"the registrar refused {url} (403: {text[:200]}): it knows this agent UUID with another EK "
                    "or attestation key; if the TPM was cleared, remove the old record with `keylime_tenant -c "
                    "regdelete -u <uuid>`", refused=True)
            if response.status != 200:
                raise RegistrarError(f"the registrar answered {url} with {response.status}: {text[:300]}")
            doc = await response.json(content_type=None)
    except aiohttp.ClientError as e:
        raise RegistrarError(f"cannot reach the registrar at {url}: {e}") from e
    if not isinstance(doc, dict):
        raise RegistrarError(f"the registrar's answer to {url} is not a JSON object")
    return doc


async def register(base: str, agent_uuid: str, *, ek: bytes, ak: bytes, ek_cert: bytes | None, mtls_cert: str,
                   ip: str, port: int) -> Challenge:
    b64 = base64.b64encode
    body: dict[str, Any] = {"ek_tpm": b64(ek).decode(), "aik_tpm": b64(ak).decode(), "mtls_cert": mtls_cert,
                            "ip": ip, "port": port}
    if ek_cert is not None:
        body["ekcert"] = b64(ek_cert).decode()
    doc = await _post(f"{base}/v{API_VERSION}/agents/{agent_uuid}", body)
    try:
        return parse_blob(base64.b64decode(doc["results"]["blob"]))
    except (KeyError, TypeError, ValueError) as e:
        raise RegistrarError(f"the registrar's answer carries no challenge blob ({e})") from e


async def activate(base: str, agent_uuid: str, tag: str) -> None:
    await _post(f"{base}/v{API_VERSION}/agents/{agent_uuid}/activate", {"auth_tag": tag})
