"""IoT Hub's reading of a SAS token's ``sr`` in the hub emulator: URL-decoded, case-insensitive, covering by path
segment (never by string prefix), with no empty segments and no scheme."""

from __future__ import annotations

import pytest

from edgeward.identity.sas import SasError, SasToken
from edgeward.testing.hub_auth import covers, parse_scope


def scope_of(sr: str):  # type: ignore[no-untyped-def]
    return parse_scope(SasToken(sr, b"", 0, None))


def test_sr_covers_by_path_segment_not_by_string_prefix() -> None:
    scope = scope_of("hub.example%2Fdevices%2Fdev-1")
    assert covers(scope, "hub.example", "/devices/dev-1")
    assert covers(scope, "HUB.example", "/devices/DEV-1/modules/m")
    assert not covers(scope, "hub.example", "/devices/dev-10/modules")
    assert not covers(scope, "hub.example", "/devices")
    assert not covers(scope, "other.example", "/devices/dev-1")
    assert covers(scope_of("hub.example"), "hub.example", "/devices/anything")


def test_sr_names_a_device_only_in_the_device_and_module_forms() -> None:
    assert scope_of("h/devices/d").device_id == "d"
    assert scope_of("h/devices/d/modules/m").module_id == "m"
    assert scope_of("h").device_id is None
    assert scope_of("h/devices/d/twin").device_id is None


@pytest.mark.parametrize("sr", ["", "h//devices", "h/devices/", "https://h/devices/d", "%2Fdevices%2Fd"])
def test_malformed_resources_are_refused(sr: str) -> None:
    with pytest.raises(SasError):
        scope_of(sr)
