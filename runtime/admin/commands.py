"""The admin commands of `sbc-sidecar` (SPEC 5.1, jambonz's `npm run cli`): fs drain/undrain/drained/
active/list, set/get/list.

The `fs` commands work directly on the cluster's Redis sets by default (the JAMBONES_REDIS_* and
JAMBONES_CLUSTER_ID variables), or through a running sidecar's admin socket with `--socket [path]`.
`set/get/list` edit the in-memory config of a running sidecar, so they always use the socket.
Output and errors are jambonz's: errors go to stderr as `Error: ...` and the exit status is 1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import AsyncExitStack
from typing import TextIO

from events import StreamNames
from runtime.admin.actions import AdminActions, JsonObject
from runtime.connections import open_redis
from runtime.errors import ConfigError
from runtime.settings import _Reader

DEFAULT_SOCKET_PATH = "/tmp/sbc-sip-sidecar.sock"
REQUEST_TIMEOUT_S = 5.0

HELP = """SBC Runtime CLI

Usage:
  sbc-sidecar cli <command> [options]      (or the commands below directly)

Feature Server Commands:
  sbc-sidecar fs drain <ip>      Drain server (remove from pool)
  sbc-sidecar fs undrain <ip>    Undrain server (add back to pool)
  sbc-sidecar fs drained         Show drained servers
  sbc-sidecar fs active          Show available servers
  sbc-sidecar fs list            Show all servers with status

Configuration Commands (a running sidecar's in-memory config, over its socket):
  sbc-sidecar set <key> <value>  Set runtime config
  sbc-sidecar get <key>          Get runtime config
  sbc-sidecar list               Show all runtime config

Options:
  --socket [path]  go through a running sidecar's admin socket
                   (default path: SBC_SOCKET_PATH, else /tmp/sbc-sip-sidecar.sock);
                   without it the fs commands work directly on Redis

Examples:
  sbc-sidecar fs drain 192.168.1.10
  sbc-sidecar fs active"""

Send = Callable[[JsonObject], Awaitable[JsonObject]]


class CommandFailed(Exception):
    """Ends a command with `Error: <message>` on stderr and exit status 1."""


async def run_admin(
    words: Sequence[str],
    env: Mapping[str, str],
    *,
    use_socket: bool = False,
    socket_path: str | None = None,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """Runs one command given as jambonz's CLI words (`["fs", "drain", "10.0.0.1"]`); returns the
    exit status. With no words, prints the help."""
    out = out or sys.stdout
    err = err or sys.stderr
    path = socket_path or env.get("SBC_SOCKET_PATH") or DEFAULT_SOCKET_PATH
    async with AsyncExitStack() as stack:
        direct: list[AdminActions] = []

        async def send(command: JsonObject) -> JsonObject:
            socket_only = command["action"] in ("set", "get", "list")
            if use_socket or socket_only:
                return await socket_request(path, command)
            if not direct:
                direct.append(await _open_direct(stack, env))
            return await direct[0].execute(command)

        try:
            await _dispatch(list(words), send, out)
        except CommandFailed as exc:
            print(f"Error: {exc}", file=err)
            return 1
    return 0


async def socket_request(path: str, command: JsonObject) -> JsonObject:
    """Sends one command to the admin socket and returns its answer (5 s deadline, as jambonz)."""
    try:
        async with asyncio.timeout(REQUEST_TIMEOUT_S):
            reader, writer = await asyncio.open_unix_connection(path)
            try:
                writer.write(json.dumps(command).encode() + b"\n")
                await writer.drain()
                line = await reader.readline()
            finally:
                writer.close()
                await writer.wait_closed()
    except TimeoutError:
        raise CommandFailed("Command timed out") from None
    except OSError as exc:
        raise CommandFailed(f"Connection failed: {exc.strerror or exc}") from exc
    try:
        answer = json.loads(line)
    except ValueError:
        answer = None
    if not isinstance(answer, dict):
        raise CommandFailed("Invalid response from server")
    return answer


async def _open_direct(stack: AsyncExitStack, env: Mapping[str, str]) -> AdminActions:
    try:
        reader = _Reader(env)
        redis_settings = reader.redis()
        cluster_id = reader.text("JAMBONES_CLUSTER_ID", "default")
    except ConfigError as exc:
        raise CommandFailed(f"{exc}; or use --socket to go through a running sidecar") from exc
    redis = await stack.enter_async_context(open_redis(redis_settings))
    return AdminActions(redis, StreamNames(cluster_id))


async def _dispatch(words: list[str], send: Send, out: TextIO) -> None:
    if not words:
        print(HELP, file=out)
        return
    command, rest = words[0], words[1:]
    if command == "fs":
        if not rest:
            raise CommandFailed("fs command requires an action")
        await _feature_servers(rest, send, out)
    elif command in ("set", "get", "list"):
        await _config(command, rest, send, out)
    else:
        raise CommandFailed(f"Unknown command: {command}. Run without arguments for help.")


async def _ask(send: Send, command: JsonObject, default_error: str) -> JsonObject:
    answer = await send(command)
    if answer.get("error") or not answer.get("success"):
        raise CommandFailed(str(answer.get("error") or default_error))
    return answer


async def _feature_servers(args: list[str], send: Send, out: TextIO) -> None:
    action = args[0]
    server = args[1] if len(args) > 1 else None
    if action in ("drain", "undrain"):
        if server is None:
            raise CommandFailed(f"{action} requires server IP address")
        answer = await _ask(send, {"action": f"fs-{action}", "server": server}, f"Failed to {action} server")
        print(f"✓ {'Drained' if action == 'drain' else 'Undrained'} {answer.get('server')}", file=out)
        print(f"Drained servers: [{', '.join(_strings(answer.get('drained')))}]", file=out)
    elif action == "drained":
        answer = await _ask(send, {"action": "fs-drained"}, "Failed to get drained servers")
        drained = _strings(answer.get("drained"))
        if not drained:
            print("No servers are currently drained", file=out)
            return
        print("Drained servers:", file=out)
        for ip in drained:
            print(f"  🔴 {ip}", file=out)
    elif action == "active":
        answer = await _ask(send, {"action": "fs-available"}, "Failed to get active servers")
        available = _strings(answer.get("available"))
        if not available:
            print("No active feature servers found", file=out)
            return
        print("Available feature servers:", file=out)
        for member in available:
            print(f"  🟢 {member}", file=out)
    elif action == "list":
        _print_listing(await _ask(send, {"action": "fs-list"}, "Failed to list servers"), out)
    else:
        raise CommandFailed(f"Unknown fs command: {action}. Use: drain, undrain, drained, active, list")


def _print_listing(answer: JsonObject, out: TextIO) -> None:
    servers = answer.get("servers")
    rows = [row for row in servers if isinstance(row, dict)] if isinstance(servers, list) else []
    if not rows:
        print("No servers configured", file=out)
        drained = _strings(answer.get("drained"))
        if drained:
            print("Orphaned drained servers:", file=out)
            for ip in drained:
                print(f"  🔴 {ip} (orphaned)", file=out)
        return
    print("Feature servers:", file=out)
    for row in rows:
        icon = "🔴" if row.get("status") == "drained" else "🟢"
        print(f"  {icon} {row.get('server')} ({row.get('status')})", file=out)


async def _config(action: str, args: list[str], send: Send, out: TextIO) -> None:
    if action == "set":
        if len(args) < 2:
            raise CommandFailed("set requires key and value")
        answer = await _ask(send, {"action": "set", "key": args[0], "value": args[1]}, "Failed to set")
        print(f"✓ {answer.get('key')} = {_js_json(answer, 'value')}", file=out)
    elif action == "get":
        if not args:
            raise CommandFailed("get requires key")
        answer = await _ask(send, {"action": "get", "key": args[0]}, "Failed to get")
        print(f"{answer.get('key')} = {_js_json(answer, 'value')}", file=out)
    else:
        answer = await _ask(send, {"action": "list"}, "Failed to list")
        config = answer.get("config")
        entries = list(config.items()) if isinstance(config, dict) else []
        print("Runtime Configuration:", file=out)
        if not entries:
            print("  (no configuration set)", file=out)
        for key, value in entries:
            print(f"  {key} = {json.dumps(value, separators=(',', ':'), ensure_ascii=False)}", file=out)


def _js_json(answer: JsonObject, field: str) -> str:
    """JSON.stringify of a field as jambonz prints it: `undefined` when it is absent."""
    if field not in answer:
        return "undefined"
    return json.dumps(answer[field], separators=(",", ":"), ensure_ascii=False)


def _strings(value: object) -> list[str]:
    return [str(item) for item in value] if isinstance(value, list) else []


# --- argparse wiring ------------------------------------------------------------------------------


def add_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Adds `fs`, `set`, `get`, `list` and `cli` (all of jambonz's `npm run cli` words) to `sbc-sidecar`."""
    fs = subparsers.add_parser("fs", help="feature servers: drain <ip>, undrain <ip>, drained, active, list")
    fs.add_argument("action", nargs="?", help="drain, undrain, drained, active or list")
    fs.add_argument("server", nargs="?", help="the feature server's IP address (drain, undrain)")
    _socket_option(fs)
    fs.set_defaults(func=cmd_fs)

    set_ = subparsers.add_parser("set", help="set a running sidecar's runtime config value (admin socket)")
    set_.add_argument("key", nargs="?")
    set_.add_argument("value", nargs="?")
    _socket_option(set_)
    set_.set_defaults(func=cmd_set)

    get = subparsers.add_parser("get", help="get a running sidecar's runtime config value (admin socket)")
    get.add_argument("key", nargs="?")
    _socket_option(get)
    get.set_defaults(func=cmd_get)

    list_ = subparsers.add_parser("list", help="show a running sidecar's runtime config (admin socket)")
    _socket_option(list_)
    list_.set_defaults(func=cmd_list)

    cli = subparsers.add_parser("cli", help="jambonz's `npm run cli` (no arguments: help)")
    _socket_option(cli)
    cli.add_argument("words", nargs=argparse.REMAINDER, help="e.g. fs drain 192.168.1.10")
    cli.set_defaults(func=cmd_cli)


def _socket_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--socket",
        nargs="?",
        const="",
        default=None,
        metavar="PATH",
        help="use a running sidecar's admin socket (default path: SBC_SOCKET_PATH or "
        f"{DEFAULT_SOCKET_PATH}) instead of Redis",
    )


def _run(words: Sequence[str], args: argparse.Namespace, env: Mapping[str, str]) -> int:
    socket = getattr(args, "socket", None)
    return asyncio.run(run_admin(words, env, use_socket=socket is not None, socket_path=socket or None))


def _present(*values: str | None) -> list[str]:
    return [value for value in values if value is not None]


def cmd_fs(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    return _run(["fs", *_present(args.action, args.server)], args, env)


def cmd_set(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    return _run(["set", *_present(args.key, args.value)], args, env)


def cmd_get(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    return _run(["get", *_present(args.key)], args, env)


def cmd_list(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    return _run(["list"], args, env)


def cmd_cli(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    return _run(list(args.words), args, env)
