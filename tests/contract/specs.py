"""The vendored upstream specs (tests/contract/upstream/), loaded with their known defects fixed, and the schema checks
of a response body against one of their definitions.

Fixed at load time (the files stay byte-for-byte upstream's):
- managementVersion_2022_08_03.yaml, ``definitions.SystemInfo.properties.provisioning`` reads
  ``type: '#/definitions/Provisioning'`` where a ``$ref`` is meant (a type must be a JSON type name).

Where aziot-edged itself answers otherwise than its spec, and the real clients accept what it answers, Edgeward answers
as aziot-edged does; those differences are listed in :data:`AZIOT_DIFFERS` with the reason, and tolerated only there.
"""

from __future__ import annotations

import copy
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import yaml

UPSTREAM = Path(__file__).resolve().parent / "upstream"

# (spec file, operationId or definition, what) -> why Edgeward answers as aziot-edged does, not as the spec says.
AZIOT_DIFFERS: dict[tuple[str, str, str], str] = {
    ("managementVersion_2022_08_03.yaml", "UpdateModule", "status 201"):
        "aziot-edged answers 201 to PUT /modules/{name} (edgelet-http-mgmt module/delete_or_get_or_update.rs); the "
        "spec says 200; the agent's generated client takes any status below 400 as success",
    ("managementVersion_2022_08_03.yaml", "Identity", "authType sas"):
        "aziot-edged answers authType \"sas\" (edgelet-http-mgmt identity/mod.rs); the spec's enum says \"Sas\"; "
        "the agent's Newtonsoft enum parsing falls back to a case-insensitive match",
}


def _fix_known_typos(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    if name.startswith("managementVersion_2022_08_03"):
        provisioning = spec["definitions"]["SystemInfo"]["properties"]["provisioning"]
        assert provisioning == {"type": "#/definitions/Provisioning"}, "the upstream typo moved: recheck the fix"
        spec["definitions"]["SystemInfo"]["properties"]["provisioning"] = {"$ref": "#/definitions/Provisioning"}
    return spec


@cache
def _load(name: str) -> dict[str, Any]:
    return _fix_known_typos(name, yaml.safe_load((UPSTREAM / name).read_text()))


def load_spec(name: str) -> dict[str, Any]:
    """A fresh copy of the named upstream spec, typos fixed."""
    return copy.deepcopy(_load(name))


def tolerant_spec(name: str) -> dict[str, Any]:
    """The spec with the documented aziot-edged differences (AZIOT_DIFFERS) admitted, for response checks."""
    spec = load_spec(name)
    if name.startswith("managementVersion"):
        spec["definitions"]["Identity"]["properties"]["authType"]["enum"].append("sas")
        put = spec["paths"]["/modules/{name}"]["put"]["responses"]
        put["201"] = put["200"]
    return spec


def schema_errors(spec_name: str, definition: str, body: Any) -> list[str]:
    """What is wrong with `body` as the spec's `definition` (empty when it conforms), aziot's differences admitted."""
    spec = tolerant_spec(spec_name)
    schema = {"$ref": f"#/definitions/{definition}", "definitions": spec["definitions"]}
    validator = jsonschema.Draft4Validator(schema)
    return [f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in validator.iter_errors(body)]
