"""The admin actions of SPEC 5.1: the in-memory runtime config and feature-server draining.

Each action takes the decoded JSON command and returns the JSON answer, `{"success": true, ...}`
or `{"success": false, "error": ...}`, with jambonz's field names. The socket server answers
with them line by line; the CLI runs them in-process when it works directly over Redis.

Deliberate change (SPEC 5.1 "Quirk"): `fs-list` and `fs-available` compare the drained IPs
with the IP part of the `ip:port` members of `<cluster>:active-fs`, so a drained server is
listed as drained and is not available. Drained IPs are stored in one spelling per address
(`canonical_ip`), the one the heartbeat compares source addresses in.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterable, Mapping

from redis.asyncio import Redis

from events import StreamNames
from projections.servers import ip_key, is_drained
from runtime.admin.addresses import canonical_ip, is_valid_ip
from runtime.faults import REDIS_FAULTS

log = logging.getLogger(__name__)

_FAULTS: tuple[type[BaseException], ...] = (*REDIS_FAULTS, TimeoutError)

JsonObject = dict[str, object]

REDIS_TIMEOUT_S = 5.0
UNKNOWN_ACTION = "Unknown action"
INVALID_COMMAND = "Invalid command"
NO_REDIS = "Redis connection not available"


def success(**fields: object) -> JsonObject:
    return {"success": True, **fields}


def failure(error: str) -> JsonObject:
    return {"success": False, "error": error}


class RuntimeConfig:
    """`set/get/add/remove/list`: a map kept in this process only; nothing in the service reads it."""

    def __init__(self) -> None:
        self._values: dict[str, object] = {}

    def set(self, key: object, value: object) -> JsonObject:
        self._values[str(key)] = value
        log.info("runtime config set key=%s", key)
        return {"key": key, "value": value}

    def get(self, key: object) -> JsonObject:
        """`value` is left out for an unknown key (as jambonz's JSON.stringify of undefined)."""
        if str(key) in self._values:
            return {"key": key, "value": self._values[str(key)]}
        return {"key": key}

    def add(self, key: object, item: object) -> JsonObject:
        array = self._array(key)
        added = item not in array
        if added:
            array.append(item)
            self._values[str(key)] = array
        return {"key": key, "item": item, "array": array, "added": added}

    def remove(self, key: object, item: object) -> JsonObject:
        before = self._array(key)
        array = [existing for existing in before if existing != item]
        removed = len(array) != len(before)
        if removed:
            self._values[str(key)] = array
        return {"key": key, "item": item, "array": array, "removed": removed}

    def all(self) -> JsonObject:
        return dict(self._values)

    def _array(self, key: object) -> list[object]:
        """The value as a list: a comma-separated string is split, anything else not a list is empty."""
        value = self._values.get(str(key))
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return list(value) if isinstance(value, list) else []


class FeatureServers:
    """The drain set and the active feature servers of one cluster, in Redis."""

    def __init__(self, redis: Redis, names: StreamNames) -> None:
        self.redis = redis
        self.names = names

    async def drain(self, ip: str) -> list[str]:
        async with asyncio.timeout(REDIS_TIMEOUT_S):
            await self.redis.sadd(self.names.drained_fs, canonical_ip(ip))
        log.info("feature server drained ip=%s", ip)
        return await self.drained()

    async def undrain(self, ip: str) -> list[str]:
        async with asyncio.timeout(REDIS_TIMEOUT_S):
            await self.redis.srem(self.names.drained_fs, *{ip, canonical_ip(ip)})
        log.info("feature server undrained ip=%s", ip)
        return await self.drained()

    async def drained(self) -> list[str]:
        async with asyncio.timeout(REDIS_TIMEOUT_S):
            return _sorted(await self.redis.smembers(self.names.drained_fs))

    async def with_status(self) -> tuple[list[tuple[str, bool]], list[str]]:
        """Every active feature server with whether it is drained, and the drained IPs."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.smembers(self.names.active_fs)
        pipe.smembers(self.names.drained_fs)
        async with asyncio.timeout(REDIS_TIMEOUT_S):
            active, drained = await pipe.execute()
        drained_ips = _sorted(drained)
        keys = {ip_key(ip) for ip in drained_ips}
        return [(member, is_drained(member, keys)) for member in _sorted(active)], drained_ips


class AdminActions:
    """Dispatches one admin command (a decoded JSON object) to its action."""

    def __init__(self, redis: Redis | None, names: StreamNames, config: RuntimeConfig | None = None) -> None:
        self.servers = FeatureServers(redis, names) if redis is not None else None
        self.config = config or RuntimeConfig()

    async def respond(self, line: str | bytes) -> JsonObject:
        """The answer to one JSON line; unparseable JSON is `Invalid command`."""
        try:
            command = json.loads(line)
        except (ValueError, UnicodeDecodeError):
            return failure(INVALID_COMMAND)
        return await self.execute(command)

    async def execute(self, command: object) -> JsonObject:
        if command is None:  # jambonz: reading .action of null throws → Invalid command
            return failure(INVALID_COMMAND)
        if not isinstance(command, Mapping):
            return failure(UNKNOWN_ACTION)
        action = command.get("action")
        config = self.config
        if action == "set":
            return success(**config.set(command.get("key"), command.get("value")))
        if action == "get":
            return success(**config.get(command.get("key")))
        if action == "add":
            return success(**config.add(command.get("key"), command.get("item")))
        if action == "remove":
            return success(**config.remove(command.get("key"), command.get("item")))
        if action == "list":
            return success(config=config.all())
        if isinstance(action, str) and action in _FS_ACTIONS:
            return await self._feature_servers(action, command.get("server", _MISSING))
        return failure(UNKNOWN_ACTION)

    async def _feature_servers(self, action: str, server: object) -> JsonObject:
        if self.servers is None:
            return failure(NO_REDIS)
        if action in ("fs-drain", "fs-undrain") and not is_valid_ip(server):
            return failure(f"Invalid IP address: {_js_text(server)}")
        try:
            if action == "fs-drain":
                assert isinstance(server, str)
                return success(action="drain", server=server, drained=await self.servers.drain(server))
            if action == "fs-undrain":
                assert isinstance(server, str)
                return success(action="undrain", server=server, drained=await self.servers.undrain(server))
            if action == "fs-drained":
                return success(drained=await self.servers.drained())
            listing, drained = await self.servers.with_status()
            if action == "fs-available":
                return success(available=[member for member, is_out in listing if not is_out])
            servers = [{"server": member, "status": "drained" if is_out else "active"} for member, is_out in listing]
            return success(servers=servers, drained=drained)
        except _FAULTS as exc:
            log.warning("admin action failed action=%s error=%s", action, exc)
            return failure(NO_REDIS)


_FS_ACTIONS = ("fs-drain", "fs-undrain", "fs-drained", "fs-available", "fs-list")
_MISSING = object()


def _sorted(values: Iterable[bytes | str]) -> list[str]:
    return sorted(v.decode() if isinstance(v, bytes) else v for v in values)


def _js_text(value: object) -> str:
    """How a JS template string shows a JSON value (the server of a malformed command)."""
    if value is _MISSING:
        return "undefined"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
