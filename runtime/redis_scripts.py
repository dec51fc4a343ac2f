"""Lua scripts run by EVALSHA inside the consumer's MULTI/EXEC.

A script is loaded with SCRIPT LOAD in the same transaction as the EVALSHA that uses it (once
per batch), so a Redis restart that emptied the script cache can never turn a commit into a
partial one (MULTI does not roll back a NOSCRIPT error).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

_BY_SHA: dict[str, Script] = {}


class Script:
    def __init__(self, name: str, source: str) -> None:
        self.name = name
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()
        _BY_SHA[self.sha] = self

    def command(self, keys: Sequence[str], args: Sequence[str | int | float]) -> tuple[str | int | float, ...]:
        return ("EVALSHA", self.sha, len(keys), *keys, *args)

    async def run(self, redis: object, keys: Sequence[str], args: Sequence[str | int | float]) -> object:
        """Runs the script outside a batch (loading it when Redis does not know it)."""
        from redis.exceptions import NoScriptError

        try:
            return await redis.execute_command(*self.command(keys, args))  # type: ignore[attr-defined]
        except NoScriptError:
            await redis.execute_command("SCRIPT", "LOAD", self.source)  # type: ignore[attr-defined]
            return await redis.execute_command(*self.command(keys, args))  # type: ignore[attr-defined]


def scripts_used(commands: Sequence[Sequence[object]]) -> list[Script]:
    """The scripts a batch of commands calls, each once, in first-use order."""
    seen: dict[str, Script] = {}
    for command in commands:
        if command and command[0] == "EVALSHA":
            sha = str(command[1])
            if sha not in seen and sha in _BY_SHA:
                seen[sha] = _BY_SHA[sha]
    return list(seen.values())


async def run_scripts(redis: object, commands: Sequence[Sequence[object]]) -> list[object]:
    """Runs commands (EVALSHA among them) in one pipeline outside a batch, the scripts loaded first (on a Redis
    Cluster, SCRIPT LOAD reaches every master). Raises the first command's error."""
    for script in scripts_used(commands):
        await redis.execute_command("SCRIPT", "LOAD", script.source)  # type: ignore[attr-defined]
    pipe = redis.pipeline(transaction=False)  # type: ignore[attr-defined]
    for command in commands:
        pipe.execute_command(*command)
    return list(await pipe.execute())
