"""Wake-ups for followers (`logs --follow`, `run wait`) when a run changes."""

from __future__ import annotations

import asyncio
import contextlib


class Notifier:
    """Per-run change signal. Take `token()` before reading, then `wait(token)`.

    Taking the token first means a change between the read and the wait is never
    missed: the token is already set.
    """

    def __init__(self) -> None:
        self._events: dict[int, asyncio.Event] = {}

    def token(self, run_id: int) -> asyncio.Event:
        return self._events.setdefault(run_id, asyncio.Event())

    def notify(self, run_id: int) -> None:
        event = self._events.pop(run_id, None)
        if event is not None:
            event.set()

    @staticmethod
    async def wait(token: asyncio.Event, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(token.wait(), seconds)
