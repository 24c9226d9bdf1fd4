"""SIGTERM during a library call that turns the interrupt into its own error still ends as an interrupt."""

from __future__ import annotations

import os
import signal

import pytest

from edgeward.supervise import sigterm_as_interrupt


class PayloadError(Exception):
    pass


def _library_call() -> None:
    """As aiohttp's parser callback does: any BaseException becomes the library's own error."""
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        signal.sigtimedwait([], 0)  # a bytecode boundary: the handler has run by now
    except BaseException as e:
        raise PayloadError(str(e)) from e


def test_an_interrupt_a_library_rewrapped_is_still_an_interrupt() -> None:
    with pytest.raises(KeyboardInterrupt, match="SIGTERM") as caught, sigterm_as_interrupt():
        _library_call()
    assert isinstance(caught.value.__cause__, PayloadError)


def test_other_errors_pass_unchanged_without_a_signal() -> None:
    with pytest.raises(PayloadError), sigterm_as_interrupt():
        raise PayloadError("not an interrupt")
