"""Stopping background tasks the one way that does not leave them half-cancelled."""

from __future__ import annotations

import asyncio
import contextlib

__all__ = ["cancel_all"]


async def cancel_all(tasks: list[asyncio.Task[None]]) -> None:
    """Cancel every task, then wait for each to finish unwinding, and forget them."""
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task
    tasks.clear()
