"""What the consumer loop hands a handler, and what a handler hands back to be committed."""

from __future__ import annotations

from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from events import Event

# A raw Redis command (name and arguments) run inside the commit's MULTI/EXEC, e.g.
# ("EVALSHA", sha, 2, key1, key2, arg...) from a projection.
RedisCommand = tuple[str | bytes | int | float, ...]


@dataclass(frozen=True, slots=True)
class Delivery:
    """One stream entry delivered to a consumer group, decoded."""

    stream: str
    entry_id: str
    event: Event
    delivery_count: int = 1


@dataclass(slots=True)
class Outcome:
    """What handling one delivery produced; committed atomically with its XACK.

    `appends` are (stream, event) pairs to XADD; `writes` are projection commands.
    """

    appends: list[tuple[str, Event]] = field(default_factory=list)
    writes: list[RedisCommand] = field(default_factory=list)


class BatchHandler(Protocol):
    """Handles a batch; returns one Outcome, or the exception it failed with, per delivery.

    A failed delivery is not acknowledged: it is delivered again later, and goes to the dead
    stream after too many tries. Handlers never ack, retry or sleep.
    """

    async def handle(self, deliveries: Sequence[Delivery]) -> Sequence[Outcome | BaseException]: ...


# What a concurrent handler gives back for one delivery: its Outcome (decided at once), the exception it
# failed with, or an awaitable that decides it later (it waits on I/O: a webhook, MySQL).
Step = Outcome | BaseException | Awaitable[Outcome]


class ConcurrentHandler(Protocol):
    """Decides deliveries independently of each other; each is committed as soon as it is decided.

    `begin` gets the deliveries that may start now (it may read what they share in one round trip) and
    answers at once for each: an Outcome, an exception, or an awaitable to finish it. `order_key` names
    what must be decided in stream order (an AOR): a delivery waits until the one before it with the same
    key is committed; None means no order. Handlers never ack, retry or sleep.
    """

    def order_key(self, event: Event) -> str | None: ...

    async def begin(self, deliveries: Sequence[Delivery]) -> Sequence[Step]: ...


class Fanout:
    """Several handlers behind one consumer group: each sees the whole batch, their outcomes are merged.

    One read and one commit serve them all (DESIGN 10: a round trip per event and group costs more
    than the budget). A delivery fails if any handler failed it; each handler ignores what is not
    its business.
    """

    def __init__(self, *handlers: BatchHandler) -> None:
        self.handlers = handlers

    async def handle(self, deliveries: Sequence[Delivery]) -> Sequence[Outcome | BaseException]:
        # One after the other, not gathered: a handler with nothing in the batch for it returns at once,
        # and a task per handler per batch cost more than the rare batch where both wait on I/O.
        per_handler = [await handler.handle(deliveries) for handler in self.handlers]
        if len(per_handler) == 1:
            return per_handler[0]
        merged: list[Outcome | BaseException] = []
        for results in zip(*per_handler, strict=True):
            failure = next((r for r in results if isinstance(r, BaseException)), None)
            if failure is not None:
                merged.append(failure)
                continue
            busy = [r for r in results if isinstance(r, Outcome) and (r.appends or r.writes)]
            if len(busy) <= 1:  # the usual case: one handler's business (or nobody's), taken as it is
                merged.append(busy[0] if busy else Outcome())
                continue
            merged.append(
                Outcome(
                    appends=[append for outcome in busy for append in outcome.appends],
                    writes=[write for outcome in busy for write in outcome.writes],
                )
            )
        return merged
