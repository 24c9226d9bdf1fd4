"""The two quotes a Keylime agent gives: identity (for the tenant, PCR 16 only) and integrity (for the verifier,
the PCRs its mask names plus 16, with the measurement list when PCR 10 is among them)."""

from __future__ import annotations

import functools
import re
from typing import Any

from .ima import IMA_PCR
from .mlist import MeasurementList, TpmRunner
from .quote_format import DATA_PCR, format_quote, pcr_blob, pcrs_of_mask
from .quote_queue import QuoteQueue
from .tpm_ops import quote_pcrs

__all__ = ["BadQuoteRequest", "Quoter"]

# Keylime's are 20 alphanumerics; qualifying data holds a digest of the TPM's largest hash (32 bytes on
# SHA-256-only TPMs). fullmatch: "$" would also let a final newline through.
_NONCE = re.compile(r"[A-Za-z0-9]{1,32}")


class BadQuoteRequest(ValueError):
    pass


class Quoter:
    """Quotes are taken through a :class:`.quote_queue.QuoteQueue`: one at a time, the verifier's integrity quotes
    before anyone's identity quotes, one of each kind per client certificate (``peer``)."""

    def __init__(self, tpm: TpmRunner, ak_handle: int, ak_algorithm: str, payload_pubkey_pem: str,
                 mlist: MeasurementList, *, queue: QuoteQueue | None = None) -> None:
        self.tpm = tpm
        self.ak_handle = ak_handle
        self.pubkey = payload_pubkey_pem
        self.mlist = mlist
        self.queue = queue or QuoteQueue()
        self.algs = {"hash_alg": "sha256", "enc_alg": ak_algorithm,
                     "sign_alg": "rsassa" if ak_algorithm == "rsa" else "ecdsa"}

    async def _quote(self, nonce: str, pcrs: list[int]) -> str:
        parts = await self.tpm.run_exclusive(functools.partial(
            quote_pcrs, ak_handle=self.ak_handle, nonce=nonce.encode(), pcrs=pcrs, bound_data=self.pubkey.encode()))
        return format_quote(parts.attest, parts.signature, pcr_blob(parts.pcrs, parts.values))

    async def identity(self, nonce: str, peer: str) -> dict[str, Any]:
        _check_nonce(nonce)
        async with self.queue.turn(peer, "identity"):
            quote = await self._quote(nonce, [DATA_PCR])
        return {"quote": quote, **self.algs, "pubkey": self.pubkey}

    async def integrity(self, nonce: str, mask: str, partial: str, entry: str, peer: str) -> dict[str, Any]:
        _check_nonce(nonce)
        try:
            pcrs = pcrs_of_mask(mask)
        except ValueError as e:
            raise BadQuoteRequest(str(e)) from None
        try:
            first = int(entry or "0")
        except ValueError:
            raise BadQuoteRequest("ima_ml_entry must be an integer") from None
        with_list = IMA_PCR in pcrs
        async with self.queue.turn(peer, "integrity"):
            if with_list:
                await self.mlist.sync()  # audit records since the last quote: a finding shows in this very quote
            quote = await self._quote(nonce, pcrs)
            # read after the quote: the list may be ahead of the quoted PCR 10 (the verifier allows that), never behind
            text, start = self.mlist.lines_from(first) if with_list else ("", 0)
        result: dict[str, Any] = {"quote": quote, **self.algs, "boottime": self.mlist.boottime}
        if partial != "1":
            result["pubkey"] = self.pubkey
        if with_list:
            result["ima_measurement_list"] = text
            result["ima_measurement_list_entry"] = start
        return result


def _check_nonce(nonce: str) -> None:
    if not _NONCE.fullmatch(nonce):
        raise BadQuoteRequest("nonce must be 1 to 32 letters and digits")
