"""A renewal failure is logged and reported with a reason, even when the exception carries no text."""

from __future__ import annotations

import pkcs11.exceptions as p11e

from edgeward.certs.renewal import failure_reason
from edgeward.keys.errors import BackendUnavailable


def test_an_exception_without_text_is_reported_by_its_type() -> None:
    assert failure_reason(p11e.GeneralError()) == "GeneralError"


def test_a_service_answer_is_reported_with_its_message() -> None:
    reason = failure_reason(BackendUnavailable("the PKCS#11 token with token label 'x' failed"))
    assert reason == "BackendUnavailable: the PKCS#11 token with token label 'x' failed"
