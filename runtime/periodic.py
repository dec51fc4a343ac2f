"""A Worker that does one step every `interval_s` until stopped: sweepers, trimmers, snapshots."""

from __future__ import annotations

import asyncio
import logging

from runtime.faults import STORE_FAULTS

log = logging.getLogger(__name__)


class Periodic:
    """Runs `step()` at once and then every `interval_s`; a fault (`faults`) is logged and the next step tries again.

    Subclasses set `name` and implement `step`; a stop ends the wait at once, never a step in progress.
    """

    name = "periodic"
    faults: tuple[type[BaseException], ...] = STORE_FAULTS  # logged, and the next step tries again

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self.ready = asyncio.Event()
        self._stop = asyncio.Event()

    def stop(self) -> None:
        self._stop.set()

    async def step(self) -> object:
        raise NotImplementedError

    async def run(self) -> None:
        self.ready.set()
        while not self._stop.is_set():
            try:
                await self.step()
            except self.faults as exc:
                log.warning("%s failed error=%s; trying again in %.1f s", self.name, exc, self.interval_s)
            try:
                async with asyncio.timeout(self.interval_s):
                    await self._stop.wait()
            except TimeoutError:
                pass
