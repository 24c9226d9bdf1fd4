"""What must never leave the device in a support bundle, whatever a module printed or a deployment set.

The bundle holds module logs (anything a module printed), modules.json (each module's createOptions, with its Env)
and the status. Redacted: PEM private keys; the value of every ``name = value`` / ``name: value`` /
``"name": "value"`` whose name says it is a secret (its last word is key, secret, password, pin, sig, token ...:
SharedAccessKey, AccountKey, primaryKey, AZURE_CLIENT_SECRET, REGISTRY_PASSWORD, access_token; or it is pin-value,
keyBytes or a connection string); everything inside a secret's ``{ ... }`` or ``[ ... ]`` (``symmetric_key = { value
= "..." }``); bearer tokens. A quoted value goes up to its closing quote (spaces and all), an unquoted one up to the
end of the line or a ``; & , " ' } ]`` (the end of a connection-string field, query parameter, JSON value or Env
entry). Only the value is replaced, so JSON stays JSON and a connection string keeps its other fields.

Session 14 (brk14b bundle_redaction_gaps): the former three patterns missed pin-value=, a JSON SharedAccessKey,
AccountKey, primaryKey, bearer tokens, Env entries such as AZURE_CLIENT_SECRET, and kept all but the first word of a
password with spaces.
"""

from __future__ import annotations

import bisect
import functools
import re

__all__ = ["REDACTED", "is_secret_name", "redact"]

REDACTED = b"<redacted>"

_PEM_BEGIN = re.compile(rb"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----")
_PEM_END = re.compile(rb"-----END [A-Z0-9 ]*PRIVATE KEY-----")
_PEM_BODY = re.compile(rb"(?:[A-Za-z0-9+/=\s]|\\[nr])*")  # a key cut off before its END: its base64 (JSON's \n too)
_PEM_MAX = 64 * 1024  # an END farther than this (an RSA 16384 key is 13 KB) ends no key begun here
_SPAN_MAX = 64 * 1024  # a secret's { ... } or [ ... ] not closed within this is redacted up to it
_BEARER = re.compile(rb"(?<![A-Za-z0-9])(bearer[ \t]+)[A-Za-z0-9._~+/-]{8,}=*", re.I)
# a name (letters, digits, _ . -), an optional closing quote, then = or : ; what follows is the value
# (a name starts after a character that is not part of one, or after a JSON-escaped newline or tab: \n, \t)
_ASSIGNMENT = re.compile(rb"(?:(?<![A-Za-z0-9_.\-\\])|(?<=\\[nrt]))([A-Za-z][A-Za-z0-9_.\-]*)"
                         rb"(\\?[\"']?[ \t]*[:=][ \t]*)")
_WORDS = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|[0-9]+")
# the last word of a secret's name (a bare "token" is a PKCS#11 URI's token label: not one)
_SECRET_LAST = frozenset({"key", "secret", "password", "passwd", "pwd", "pass", "passphrase", "pin", "pat", "sig",
                          "signature", "credential", "credentials", "authorization"})
_SECRET_WHOLE = frozenset({"pinvalue", "keybytes", "connectionstring", "connstr", "sharedaccesskey"})
# a name written in one case is one "word" (APIKEY, dbpassword): what it ends with decides (never a bare "key" or
# "pin" there: monkey=, spin=)
_SECRET_ENDINGS = ("apikey", "accesskey", "privatekey", "secretkey", "saskey", "sharedkey", "masterkey", "authkey",
                   "password", "passwd", "passphrase", "secret", "credential", "credentials")
# scheme://user:PASSWORD@host
_URL_PASSWORD = re.compile(rb"([A-Za-z][A-Za-z0-9+.\-]*://[^\s/:@\"'<>]*:)([^\s/@\"'<>]+)(?=@)")
_UNQUOTED_END = re.compile(rb"(?:\\[^nr]|[^\r\n\"';&,}\]\\])*")  # an escaped quote goes on, an escaped newline ends
_QUOTED_BODY = {b'"': re.compile(rb'(?:\\.|[^"\\\r\n])*'), b"'": re.compile(rb"(?:\\.|[^'\\\r\n])*"),
                # a string quoted inside a JSON string (\"...\"): up to the next \" or the outer string's end
                b'\\"': re.compile(rb'(?:\\[^"nr]|[^"\\\r\n])*'), b"\\'": re.compile(rb"(?:\\[^'nr]|[^'\"\\\r\n])*")}
_BRACKET_TOKEN = re.compile(rb"\"(?:\\.|[^\"\\\r\n])*\"?|'(?:\\.|[^'\\\r\n])*'?|[{}\[\]]")


@functools.lru_cache(maxsize=4096)  # a bundle repeats its names (every log line's fields)
def is_secret_name(name: str) -> bool:
    """Whether a setting, field or environment variable of this name holds a secret."""
    words = [w.lower() for w in _WORDS.findall(name)]
    if not words:
        return False
    joined = "".join(words)
    return (words[-1] in _SECRET_LAST or (words[-1] == "token" and len(words) > 1) or joined in _SECRET_WHOLE
            or "connectionstring" in joined or "connstr" in joined or joined.endswith(_SECRET_ENDINGS))


def _quoted_end(data: bytes, start: int, quote: bytes | None = None) -> int:
    """The index of the quote closing the string that opens at ``start`` with ``quote`` (its first byte unless
    given; ``\\"`` for a string quoted inside a JSON string), or of the end of its line."""
    quote = quote or data[start:start + 1]
    body = _QUOTED_BODY[quote].match(data, start + len(quote))
    return body.end() if body is not None else start + len(quote)


def _bracket_end(data: bytes, start: int) -> int:
    """The index just past the bracket closing the one at ``start`` (quoted strings skipped), or the span's cap."""
    depth, limit = 0, min(len(data), start + _SPAN_MAX)
    for token in _BRACKET_TOKEN.finditer(data, start, limit):
        c = token[0][:1]
        if c in b"{[":
            depth += 1
        elif c in b"}]":
            depth -= 1
            if depth == 0:
                return token.end()
    return limit


def _redact_pem(data: bytes) -> bytes:
    """Each PEM private key, from its BEGIN line to its END line (or through its base64, when cut off)."""
    if b"PRIVATE KEY-----" not in data:
        return data
    ends = [m.end() for m in _PEM_END.finditer(data)]
    out: list[bytes] = []
    pos = 0
    for m in _PEM_BEGIN.finditer(data):
        if m.start() < pos:
            continue
        i = bisect.bisect_left(ends, m.end())
        if i < len(ends) and ends[i] - m.end() <= _PEM_MAX:
            end = ends[i]
        else:
            body = _PEM_BODY.match(data, m.end())
            end = body.end() if body is not None else m.end()
        out += [data[pos:m.start()], REDACTED]
        pos = end
    out.append(data[pos:])
    return b"".join(out)


# inside a secret's brackets, left to right: a quoted string (a name when = or : follows), or a bare value after
# = or :
_INSIDE = re.compile(rb"(?P<str>\"(?:\\.|[^\"\\\r\n])*\"|'(?:\\.|[^'\\\r\n])*')(?P<name>(?=[ \t]*[:=]))?"
                     rb"|(?P<sep>[=:][ \t]*)(?P<bare>[^\s\"'{\[,}\]][^\r\n\"';&,}\]]*)")


def _inside(m: re.Match[bytes]) -> bytes:
    if m["str"] is not None:
        return m[0] if m["name"] is not None else m["str"][:1] + REDACTED + m["str"][:1]
    return m["sep"] + REDACTED


def _redact_inside(span: bytes) -> bytes:
    """Every value inside a secret's brackets: its strings (not the names) and its bare values."""
    return _INSIDE.sub(_inside, span)


def _redact_values(data: bytes) -> bytes:
    out: list[bytes] = []
    pos = 0
    for m in _ASSIGNMENT.finditer(data):
        if m.start() < pos or not is_secret_name(m[1].decode("ascii")):
            continue  # inside a value already redacted, or not a secret: its value is scanned on
        start = m.end()
        first = data[start:start + 1]
        if data.startswith(REDACTED, start):
            continue
        escaped = data[start:start + 2]
        if escaped in (b'\\"', b"\\'"):
            end = _quoted_end(data, start, escaped)
            out += [data[pos:start + 2], REDACTED]
        elif first in (b'"', b"'"):
            end = _quoted_end(data, start)
            out += [data[pos:start + 1], REDACTED]
        elif first in (b"{", b"["):
            end = _bracket_end(data, start)
            out += [data[pos:start], _redact_inside(data[start:end])]
        else:
            bare = _UNQUOTED_END.match(data, start)
            end = bare.end() if bare is not None else start
            if end == start:
                continue
            out += [data[pos:start], REDACTED]
        pos = end
    out.append(data[pos:])
    return b"".join(out)


def redact(data: bytes) -> bytes:
    """``data`` with every secret value it shows replaced by ``<redacted>`` (see the module's docstring)."""
    data = _redact_pem(data)
    data = _BEARER.sub(lambda m: m[1] + REDACTED, data)
    data = _URL_PASSWORD.sub(lambda m: m[1] + REDACTED, data)
    return _redact_values(data)
