"""The identity API's hand-written body checks against the pydantic models they replaced (kept here as the
oracle): any JSON object is accepted with the same values or refused with the same 422 message."""

from __future__ import annotations

from typing import Any, Literal

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ConfigDict, Field

from edgeward.identity import wire
from tests.unit.wire_oracle import same_outcome


class _Body(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="ignore", frozen=True)


class IdTypeRequest(_Body):
    type: str = Field(max_length=64)


class LocalIdOpts(_Body):
    type: Literal["x509"] = "x509"
    attributes: Literal["client", "server"] = "client"


class CreateModuleRequest(_Body):
    type: str = Field(max_length=64)
    module_id: str = Field(alias="moduleId", max_length=128)
    local_id_opts: LocalIdOpts | None = Field(default=None, alias="localIdOpts")


NAMES = ["type", "moduleId", "module_id", "localIdOpts", "local_id_opts", "attributes", "other"]
scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=5),
                    st.sampled_from(["x509", "X509", "client", "server", "Server", "aziot", "local", "\ud800",
                                     "t" * 64, "t" * 65, "m" * 128, "m" * 129, "\udc00" * 3]))
flat = st.dictionaries(st.sampled_from(NAMES), scalars, max_size=4)
bodies = st.dictionaries(st.sampled_from(NAMES), st.one_of(scalars, flat, st.lists(scalars, max_size=2)), max_size=6)


@pytest.mark.parametrize(("model", "ours"), [(IdTypeRequest, wire.IdTypeRequest.parse),
                                             (CreateModuleRequest, wire.CreateModuleRequest.parse)],
                         ids=["id-type", "create-module"])
@settings(max_examples=500, deadline=None)
@given(data=bodies)
@example(data={"type": "local", "moduleId": "m", "localIdOpts": {"type": "x509", "attributes": "server"}})
@example(data={"type": 1, "module_id": "m" * 129, "local_id_opts": {"type": None, "attributes": 5}})
@example(data={"type": "aziot", "moduleId": "m", "localIdOpts": "x509"})
def test_identity_bodies_are_accepted_and_refused_as_the_pydantic_models_did(model: type[BaseModel], ours: Any,
                                                                           data: dict[str, Any]) -> None:
    same_outcome(model, ours, data)
