"""Redis Cluster on the hot path: the slot map, a lean connection per master, every command sent to its slot's owner.

`ClusterLinks` offers what `RespLink` offers (`pipeline`, `transaction`, `command`), routed by key: the map comes
from `CLUSTER SLOTS` at first use and again after a `MOVED` (a slot that moved) or a lost connection (a master that
failed over). A command answered `MOVED` or `ASK` was not run, so it is sent again (at most `REDIRECTS` times): after
`MOVED` to the new owner the map names, after `ASK` (its slot is being migrated and the key has gone) with `ASKING` to
the importing master, the map left as it is. A transaction on a slot being migrated is refused (`ASK`, `TRYAGAIN`)
and tried again after the map is read; the consumer retries a commit that still fails, until the slot has moved. A
command on a connection that broke may have run, so it is not sent again: the caller gets the error, as with a single
Redis.

`commit` is the consumer's commit on a cluster: the commands in the slot of the streams it acknowledges (the
partition's `{p}` hash tag) run in one MULTI/EXEC there, as on a single Redis; the others, the keys jambonz reads
(`user:<aor>`, `active-user`, `<cluster>:active-fs` ...), live in slots of their own and run first, each on its
master, so what jambonz reads is written before the decision is committed and its answer leaves. They are written
again if the commit fails and the delivery is retried; every such write is idempotent (SETEX, DEL, SADD, ZADD ...).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import replace

import hiredis
from redis.crc import key_slot as _key_slot
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from runtime.resp import Command, LinkSettings, NotConnected, RespLink

log = logging.getLogger(__name__)

SLOTS = 16384
REDIRECTS = 3

Node = tuple[str, int]

# Commands whose every argument is a key; those with no key at all go to any master.
_ALL_KEYS = frozenset({"MGET", "DEL", "UNLINK", "EXISTS", "TOUCH"})
_NO_KEY = frozenset({"PING", "INFO", "CLUSTER", "SCRIPT", "MULTI", "EXEC", "TIME", "COMMAND", "AUTH", "SELECT"})
_SUBCOMMAND_KEY = frozenset({"XGROUP", "XINFO", "OBJECT", "MEMORY"})


def key_slot(key: object) -> int:
    """The hash slot of a key, its `{tag}` honoured."""
    return _key_slot(key if isinstance(key, bytes) else str(key).encode())


def _name(command: Command) -> str:
    head = command[0]
    return (head.decode() if isinstance(head, bytes) else str(head)).upper()


def command_keys(command: Command) -> Sequence[object]:
    """The keys a command touches, as Redis Cluster sees them (the commands this service sends)."""
    name = _name(command)
    if name in _NO_KEY or len(command) < 2:
        return ()
    if name in ("EVALSHA", "EVAL", "FCALL"):
        count = int(command[2])  # type: ignore[call-overload]
        return command[3 : 3 + count]
    if name in _ALL_KEYS:
        return command[1:]
    if name in ("XREAD", "XREADGROUP"):
        upper = [(a.decode() if isinstance(a, bytes) else str(a)).upper() for a in command]
        start = upper.index("STREAMS") + 1
        return command[start : start + (len(command) - start) // 2]
    if name in _SUBCOMMAND_KEY:
        return command[2:3]
    return command[1:2]


def command_slot(command: Command) -> int | None:
    """The one slot a command's keys share; None when it has no key. Keys in several slots are a caller's bug."""
    keys = command_keys(command)
    if not keys:
        return None
    slots = {key_slot(k) for k in keys}
    if len(slots) > 1:
        raise ValueError(f"{_name(command)} spans {len(slots)} hash slots on a Redis Cluster: {list(keys)[:4]!r}")
    return slots.pop()


_REDIRECTS = ("MOVED ", "ASK ", "TRYAGAIN", "CLUSTERDOWN")


def _redirect(reply: object) -> bool:
    return isinstance(reply, hiredis.ReplyError) and str(reply).startswith(_REDIRECTS)


class ClusterLinks:
    """The lean connections to every master of a Redis Cluster, from one node's address (any node)."""

    def __init__(self, seed: LinkSettings) -> None:
        self.seed = seed
        self._links: dict[Node, RespLink] = {}
        self._owners: list[Node] | None = None  # slot -> master
        self._refreshing: asyncio.Lock | None = None
        self.refreshes = 0

    # -- the slot map --------------------------------------------------------------------------------------

    def _link(self, node: Node) -> RespLink:
        link = self._links.get(node)
        if link is None:
            link = self._links[node] = RespLink(replace(self.seed, host=node[0], port=node[1]))
        return link

    async def refresh(self) -> None:
        """Reads `CLUSTER SLOTS` from the first node that answers: the seed, then the masters known."""
        if self._refreshing is None:
            self._refreshing = asyncio.Lock()
        async with self._refreshing:
            seed = (self.seed.host, self.seed.port)
            candidates = [seed, *(node for node in self._links if node != seed)]
            last: Exception | None = None
            for node in candidates:
                try:
                    reply = await self._link(node).command("CLUSTER", "SLOTS")
                except (RedisConnectionError, ResponseError, OSError) as exc:
                    last = exc
                    continue
                self._owners = self._parse_slots(reply)
                self.refreshes += 1
                return
            raise NotConnected(f"no node of the Redis Cluster answered CLUSTER SLOTS: {last}")

    def _parse_slots(self, reply: object) -> list[Node]:
        owners: list[Node | None] = [None] * SLOTS
        for entry in reply or []:  # type: ignore[attr-defined]
            first, last, master = int(entry[0]), int(entry[1]), entry[2]
            host = master[0].decode() if isinstance(master[0], bytes) else str(master[0])
            node = (host or self.seed.host, int(master[1]))  # an empty host: the node we asked
            for slot in range(first, last + 1):
                owners[slot] = node
        missing = sum(1 for owner in owners if owner is None)
        if missing:
            log.warning("redis cluster serves %d of %d slots", SLOTS - missing, SLOTS)
        fallback = (self.seed.host, self.seed.port)
        return [owner or fallback for owner in owners]

    async def owner(self, slot: int | None) -> Node:
        owners = self._owners or await self._slot_map()
        return owners[0 if slot is None else slot]

    async def _slot_map(self) -> list[Node]:
        """The slot map, read first when there is none (at the start, after a lost connection)."""
        if self._owners is None:
            await self.refresh()
        assert self._owners is not None
        return self._owners

    def _forget_map(self) -> None:
        """A lost connection: the slot may have failed over; the next command reads the map again."""
        self._owners = None

    # -- what RespLink offers, routed ----------------------------------------------------------------------

    async def pipeline(self, commands: Sequence[Command]) -> list[object]:
        """Every command sent to its slot's master (one write per master, all at once); replies in order (errors as
        hiredis.ReplyError values). Raises when a master could not be reached."""
        replies = await self.replies(commands)
        lost = next((reply for reply in replies if isinstance(reply, RedisConnectionError)), None)
        if lost is not None:
            raise lost
        return replies

    async def replies(self, commands: Sequence[Command]) -> list[object]:
        """As `pipeline`, but a master that could not be reached gives each of its commands the error (a
        RedisConnectionError) as its reply, while the others' commands run and answer."""
        replies: list[object] = [None] * len(commands)
        todo = list(range(len(commands)))
        slots = [command_slot(c) for c in commands]
        for attempt in range(REDIRECTS + 1):
            owners = self._owners or await self._slot_map()
            by_node: dict[Node, list[int]] = {}
            for index in todo:
                slot = slots[index]
                by_node.setdefault(owners[0 if slot is None else slot], []).append(index)
            if len(by_node) == 1:  # the usual case (one partition's streams): no task per master
                [(node, indexes)] = by_node.items()
                try:
                    results: list[list[object] | BaseException] = [
                        await self._link(node).pipeline([commands[i] for i in indexes])
                    ]
                except RedisConnectionError as exc:
                    results = [exc]
            else:
                results = await asyncio.gather(
                    *(self._link(node).pipeline([commands[i] for i in group]) for node, group in by_node.items()),
                    return_exceptions=True,
                )
            again: list[int] = []
            asked: list[tuple[int, Node]] = []
            for indexes, result in zip(by_node.values(), results, strict=True):
                if isinstance(result, BaseException):
                    if not isinstance(result, RedisConnectionError):
                        raise result
                    self._forget_map()  # the master may have failed over: the next command reads the map again
                    for index in indexes:
                        replies[index] = result
                    continue
                for index, reply in zip(indexes, result, strict=True):
                    replies[index] = reply
                    if attempt == REDIRECTS or not _redirect(reply):
                        continue
                    target = self._asked(reply)
                    if target is None:
                        again.append(index)
                    else:
                        asked.append((index, target))
            if asked:  # a slot being migrated: ASKING, then the command, at the importing master; the map stays
                answers = await asyncio.gather(
                    *(self._link(node).pipeline([("ASKING",), commands[index]]) for index, node in asked),
                    return_exceptions=True,
                )
                for (index, _), answer in zip(asked, answers, strict=True):
                    if isinstance(answer, BaseException):
                        if not isinstance(answer, RedisConnectionError):
                            raise answer
                        replies[index] = answer
                        continue
                    replies[index] = answer[1]
                    if _redirect(answer[1]):
                        again.append(index)
            if not again:
                return replies
            await self._after_redirect(attempt)
            todo = again
        return replies

    def _asked(self, reply: object) -> Node | None:
        """The master an `ASK <slot> <host>:<port>` reply names; None for any other reply."""
        text = str(reply)
        if not text.startswith("ASK "):
            return None
        host, _, port = text.split()[-1].rpartition(":")
        return (host or self.seed.host, int(port))

    async def _after_redirect(self, attempt: int) -> None:
        if attempt:
            await asyncio.sleep(0.05 * attempt)  # TRYAGAIN / CLUSTERDOWN: a moment for the cluster to settle
        await self.refresh()

    async def transaction(
        self, commands: Sequence[Command], scripts: Sequence[str] = (), *, slot: int | None = None
    ) -> list[object]:
        """MULTI/EXEC on the master of the commands' one slot (see `RespLink.transaction`); `slot`, when the caller
        knows it already."""
        if slot is None:
            slot = _common_slot(commands)
        for attempt in range(REDIRECTS + 1):
            link = self._link(await self.owner(slot))
            try:
                return await link.transaction(commands, scripts)
            except RedisConnectionError:
                self._forget_map()
                raise
            except ResponseError as exc:
                text = str(exc)
                if attempt == REDIRECTS or not any(mark in text for mark in _REDIRECTS):
                    raise
            await self._after_redirect(attempt)
        raise AssertionError("unreachable")

    async def command(self, *args: object) -> object:
        reply = (await self.pipeline([args]))[0]
        if isinstance(reply, hiredis.ReplyError):
            raise ResponseError(str(reply))
        return reply

    async def mget(self, keys: Sequence[str]) -> list[object]:
        """MGET of keys in any slots: one MGET per slot, pipelined per master."""
        by_slot: dict[int, list[int]] = {}
        for index, key in enumerate(keys):
            by_slot.setdefault(key_slot(key), []).append(index)
        groups = list(by_slot.values())
        replies = await self.pipeline([("MGET", *(keys[i] for i in group)) for group in groups])
        values: list[object] = [None] * len(keys)
        for group, reply in zip(groups, replies, strict=True):
            if isinstance(reply, hiredis.ReplyError):
                raise ResponseError(str(reply))
            for index, value in zip(group, reply, strict=True):  # type: ignore[call-overload]
                values[index] = value
        return values

    async def commit(
        self,
        commands: Sequence[Command],
        scripts: Sequence[tuple[str, str]] = (),
        after: Callable[[Command], bool] | None = None,
    ) -> list[object]:
        """A consumer's commit: the commands outside the home slot first (each on its master), then MULTI/EXEC of
        the rest on the home slot's master. `scripts` are (sha, source) of the scripts the commands call.
        Commands outside the home slot for which `after` is true (a reply to an ingest of another partition) run
        after the EXEC instead: an answer never goes out before the facts it answers are stored.

        The home slot is that of the first XACK (the streams the commit acknowledges), else of the first command.
        """
        home = next((command_slot(c) for c in commands if _name(c) == "XACK"), None)
        if home is None:
            home = next((s for c in commands if (s := command_slot(c)) is not None), None)
        inside: list[Command] = []
        before: list[Command] = []
        later: list[Command] = []
        for command in commands:
            slot = command_slot(command)
            if slot is None or slot == home:
                inside.append(command)
            else:
                (later if after is not None and after(command) else before).append(command)
        if before:
            await self._run_outside(before, scripts)
        sources = {sha: source for sha, source in scripts}
        used = [sources[sha] for sha in _shas(inside) if sha in sources]
        replies = await self.transaction(inside, used, slot=home)
        if later:
            await self._run_outside(later, scripts)
        return replies

    async def _run_outside(self, commands: Sequence[Command], scripts: Sequence[tuple[str, str]]) -> None:
        """Runs the commands (no MULTI: they span slots), each script they call loaded first on its master."""
        sources = {sha: source for sha, source in scripts}
        loads: list[Command] = [("SCRIPT", "LOAD", sources[sha]) for sha in _shas(commands) if sha in sources]
        if loads:  # SCRIPT LOAD has no key: it is sent to every master that runs one of the commands
            nodes = {await self.owner(command_slot(c)) for c in commands if _name(c) == "EVALSHA"}
            for reply in await asyncio.gather(*(self._link(node).pipeline(loads) for node in nodes)):
                _raise_on_error(reply)
        _raise_on_error(await self.pipeline(commands))

    def dedicated(self) -> ClusterLinks:
        """Connections of their own (a blocking reader's), routed the same way."""
        return ClusterLinks(self.seed)

    def close(self) -> None:
        for link in self._links.values():
            link.close()
        self._links.clear()


def _common_slot(commands: Sequence[Command]) -> int | None:
    slots = {s for c in commands if (s := command_slot(c)) is not None}
    if len(slots) > 1:
        raise ValueError(f"a transaction spans {len(slots)} hash slots on a Redis Cluster")
    return slots.pop() if slots else None


def _shas(commands: Sequence[Command]) -> list[str]:
    seen: dict[str, None] = {}
    for command in commands:
        if _name(command) == "EVALSHA":
            seen.setdefault(str(command[1]), None)
    return list(seen)


def _raise_on_error(replies: Sequence[object]) -> None:
    for reply in replies:
        if isinstance(reply, hiredis.ReplyError):
            raise ResponseError(str(reply))
