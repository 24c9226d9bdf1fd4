"""The support bundle's redaction: every secret a module may print or a deployment may set is replaced, and only
its value, so ordinary text, JSON and connection strings keep their shape (session 14, brk14b
bundle_redaction_gaps: pin-value=, a JSON SharedAccessKey, AccountKey, primaryKey, bearer tokens, Env entries such
as AZURE_CLIENT_SECRET went out as they were, and a password with spaces kept all but its first word)."""

from __future__ import annotations

import json

import pytest

from edgeward.cli.system_cmds import redact  # what `edgeward support-bundle` applies to every file of the bundle

CASES = [
    (b"conn: HostName=hub.example;DeviceId=d1;SharedAccessKey=LEAK1aaaa=",
     b"conn: HostName=hub.example;DeviceId=d1;SharedAccessKey=<redacted>"),
    (b'{"SharedAccessKey": "LEAK2bbbb="}', b'{"SharedAccessKey": "<redacted>"}'),
    (b"DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=LEAK3cc==;EndpointSuffix=core.windows.net",
     b"DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=<redacted>;EndpointSuffix=core.windows.net"),
    (b'{"primaryKey": "LEAK4d=", "secondaryKey": "LEAK4e="}',
     b'{"primaryKey": "<redacted>", "secondaryKey": "<redacted>"}'),
    (b"Authorization: Bearer LEAK5eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.sig", b"Authorization: <redacted>"),
    (b"sent with bearer LEAK5eyJhbGciOiJIUzI1NiJ9.x to the hub", b"sent with bearer <redacted> to the hub"),
    (b'identity_pk = "pkcs11:token=edge;object=device-id?pin-value=LEAK11"',
     b'identity_pk = "pkcs11:token=edge;object=device-id?pin-value=<redacted>"'),
    (b"pkcs11:token=edge?pin-value=LEAK11&module-path=/usr/lib/p11.so",
     b"pkcs11:token=edge?pin-value=<redacted>&module-path=/usr/lib/p11.so"),
    (b'password: "LEAK12 with spaces"', b'password: "<redacted>"'),
    (b"password: LEAK12 with spaces", b"password: <redacted>"),
    (b"db_password='LEAK13 two words' next", b"db_password='<redacted>' next"),
    (b"SharedAccessSignature sr=hub%2Fdevices%2Fd1&sig=LEAK10iii%3D&se=1800000000",
     b"SharedAccessSignature sr=hub%2Fdevices%2Fd1&sig=<redacted>&se=1800000000"),
    (b'"Env": ["STORAGE=DefaultEndpointsProtocol=https;AccountName=a;AccountKey=LEAKENV1xx==", '
     b'"AZURE_CLIENT_SECRET=LEAKENV2yyyy", "REGISTRY_PASSWORD=LEAKENV3 x", "HUB_CONNECTION_STRING=LEAKENV4", '
     b'"API_TOKEN=LEAKENV5", "SMARTCARD_PIN=LEAKENV6", "LOG_LEVEL=debug"]',
     b'"Env": ["STORAGE=DefaultEndpointsProtocol=https;AccountName=a;AccountKey=<redacted>", '
     b'"AZURE_CLIENT_SECRET=<redacted>", "REGISTRY_PASSWORD=<redacted>", "HUB_CONNECTION_STRING=<redacted>", '
     b'"API_TOKEN=<redacted>", "SMARTCARD_PIN=<redacted>", "LOG_LEVEL=debug"]'),
    (b'symmetric_key = { value = "LEAK14" }', b'symmetric_key = { value = "<redacted>" }'),
    (b'"symmetricKey": {"primaryKey": "LEAK15", "extra": ["LEAK16"]}',
     b'"symmetricKey": {"primaryKey": "<redacted>", "extra": ["<redacted>"]}'),
    (b'{"keyBytes": "LEAK17", "key_bytes": "LEAK18", "pin": 1234}',
     b'{"keyBytes": "<redacted>", "key_bytes": "<redacted>", "pin": <redacted>}'),
    (b"-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEIAbc\n-----END EC PRIVATE KEY-----\n", b"<redacted>\n"),
    (b"-----BEGIN PRIVATE KEY-----\\nMIGHAgEAMBMG\\nLEAK19", b"<redacted>"),  # cut off before its END, in JSON
    (b'"msg": "login password: \\"LEAK20 x\\" refused"', b'"msg": "login password: \\"<redacted>\\" refused"'),
    (b'"msg": "payload {\\"SharedAccessKey\\": \\"LEAK21\\", \\"n\\": 1}"',  # JSON inside a JSON string
     b'"msg": "payload {\\"SharedAccessKey\\": \\"<redacted>\\", \\"n\\": 1}"'),
    (b'"log": "token=abc\\nsecret=LEAK22\\nnext"', b'"log": "token=abc\\nsecret=<redacted>\\nnext"'),
    # h/brk14c F4: names in one case read as one word, short secret words, passwords in URLs
    (b'"Env": ["APIKEY=LEAK30", "dbpassword=LEAK31", "SASKEY=LEAK32", "ACCESSKEY=LEAK33", "PRIVATEKEY=LEAK34", '
     b'"MQTT_PASS=LEAK35", "GITHUB_PAT=LEAK36"]',
     b'"Env": ["APIKEY=<redacted>", "dbpassword=<redacted>", "SASKEY=<redacted>", "ACCESSKEY=<redacted>", '
     b'"PRIVATEKEY=<redacted>", "MQTT_PASS=<redacted>", "GITHUB_PAT=<redacted>"]'),
    (b"connecting to postgres://app:LEAK37@db:5432/x and amqps://u:LEAK38%40x@broker",
     b"connecting to postgres://app:<redacted>@db:5432/x and amqps://u:<redacted>@broker"),
]


@pytest.mark.parametrize("raw, expected", CASES)
def test_each_secret_is_redacted_and_only_its_value(raw: bytes, expected: bytes) -> None:
    assert redact(raw) == expected
    assert b"LEAK" not in redact(raw)
    assert redact(redact(raw)) == redact(raw)  # redacting twice changes nothing


ORDINARY = [
    b"2026-12-04T20:00:00.123456Z ready: listening on 0.0.0.0:8080, url=https://hub.example/devices?api-version=2021",
    b"HostName=hub.example;DeviceId=edge-7;ModuleId=filter",
    b'{"name": "filter", "image": "/usr/bin/sleep", "keyId": "aziot_edged_ca", "status": "running", "count": 3}',
    b"pkcs11:token=edge;object=device-id?module-path=/usr/lib/softhsm/libsofthsm2.so",
    b"mapping: spin=3 pinned: yes shipping=free monkey business; the bearer of bad news",
    b"invalid password for user bob; key rotated at 12:00",
    b"CN=edge.example, O=Contoso [bold]x[/bold]",
]


@pytest.mark.parametrize("text", ORDINARY)
def test_ordinary_text_is_not_mangled(text: bytes) -> None:
    assert redact(text) == text


def test_json_stays_json() -> None:
    doc = [{"name": "m", "config": {"createOptions": {"Env": ["A=1", "AZURE_CLIENT_SECRET=s e c", "PASSWORD=p\"q"],
                                                      "Labels": {"password": "x y", "SharedAccessKey": "k"}}}}]
    out = json.loads(redact(json.dumps(doc, indent=2).encode()))
    opts = out[0]["config"]["createOptions"]
    assert opts["Env"] == ["A=1", "AZURE_CLIENT_SECRET=<redacted>", "PASSWORD=<redacted>"]
    assert opts["Labels"] == {"password": "<redacted>", "SharedAccessKey": "<redacted>"}
