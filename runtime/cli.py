"""The `sbc-sidecar` command: run, db init, events tail, history, replay, sbcs, fs ..., version."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Callable, Coroutine, Mapping, Sequence
from datetime import UTC, datetime
from importlib import metadata
from typing import TYPE_CHECKING, Any

from runtime.envfile import ENV_FILE_VARIABLE, with_env_file
from runtime.errors import ConfigError

if TYPE_CHECKING:
    from runtime.settings import StreamSettings

EXIT_CONFIG = 2
EXIT_USAGE = 2


def _version() -> str:
    try:
        return metadata.version("sbc-sidecar")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def _run_async(main: Coroutine[Any, Any, int | None]) -> int:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main) or 0
    return uvloop.run(main) or 0


def cmd_version(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    print(f"sbc-sidecar {_version()}")
    return 0


def cmd_run(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    from runtime.compiled import stale_modules

    stale = stale_modules()  # before anything imports them: an old build would run instead of the source
    if stale:
        fix = "run scripts/compile.py"
        raise ConfigError("compiled modules", f"not built from the source beside them: {', '.join(stale)}; {fix}")
    from runtime import app, logs
    from runtime.settings import Settings

    settings = Settings.from_env(env)
    roles = [r.strip() for r in args.roles.split(",") if r.strip()]
    unknown = [r for r in roles if r not in app.ROLES]
    if unknown or not roles:
        raise ConfigError("--roles", f"must be a comma list of {', '.join(app.ROLES)}, got {args.roles!r}")
    logs.configure(settings.log_level)
    try:
        return _run_async(app.run(settings, roles, tune_gc=True))
    except BaseExceptionGroup as group:  # a worker's start found a setting wrong (a SIP port in use ...)
        wrong = group.subgroup(ConfigError)
        if wrong is None:
            raise
        first = wrong.exceptions[0]
        while isinstance(first, BaseExceptionGroup):
            first = first.exceptions[0]
        raise first from None


def cmd_db_init(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    from runtime.database import DemoTenant, init_database, mysql_settings_from_env

    settings = mysql_settings_from_env(env)
    demo = None
    if args.demo:
        secret = (env.get("ENCRYPTION_SECRET") or env.get("JWT_SECRET") or "").strip()
        if not secret:
            raise ConfigError("ENCRYPTION_SECRET", "is required with --demo (it encrypts the demo client's password)")
        legacy = bool((env.get("LEGACY_CRYPTO") or "").strip())
        demo = DemoTenant(encryption_secret=secret, webhook_url=args.webhook_url, legacy_crypto=legacy)
    return _run_async(init_database(settings, demo=demo))


def cmd_events_tail(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    from runtime.inspect import TailFilter, parse_aor, parse_since, parse_types, tail_events
    from runtime.settings import StreamSettings

    settings = StreamSettings.from_env(env)
    where = TailFilter(
        aor=parse_aor(args.aor) if args.aor else None,
        types=parse_types(args.type or ()),
        since_ms=parse_since(args.since, datetime.now(UTC)) if args.since else None,
        sbc=args.sbc,
    )
    tail = tail_events(settings, streams=args.stream, from_start=args.from_start, limit=args.limit, where=where)
    return _run_async(tail)


def cmd_history(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    from runtime.inspect import InspectError, parse_since, print_history
    from runtime.settings import StreamSettings

    if args.carrier is not None:
        from runtime.carriers_view import print_carrier_history

        return _run_async(print_carrier_history(StreamSettings.from_env(env), args.carrier))
    if args.aor is None:
        raise InspectError("history needs an address of record or --carrier <voip_carrier_sid or name>")
    now = datetime.now(UTC)
    since_ms = parse_since(args.since, now) if args.since else None
    until_ms = parse_since(args.until, now, "--until") if args.until else None
    history = print_history(
        StreamSettings.from_env(env), args.aor, as_json=args.json, since_ms=since_ms, until_ms=until_ms
    )
    return _run_async(history)


def cmd_carriers(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    from runtime.carriers_view import print_carriers
    from runtime.settings import StreamSettings

    return _run_async(print_carriers(StreamSettings.from_env(env)))


def cmd_sbcs(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    from runtime.sbcs import print_sbcs
    from runtime.settings import StreamSettings

    return _run_async(print_sbcs(StreamSettings.from_env(env), json_lines=args.json))


def cmd_replay(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    from runtime.settings import StreamSettings

    return _run_async(_replay(StreamSettings.from_env(env), args.projection))


async def _replay(settings: StreamSettings, projection: str) -> int:
    from events import StreamNames, default_codec
    from events.streams import partition_names
    from projections.replay import replay_registrations
    from runtime.connections import open_redis, resp_link_settings
    from runtime.eventlog import EventLog

    assert projection == "registrations"  # the parser's only choice
    async with open_redis(settings.redis) as redis:
        names = StreamNames(settings.eventlog.cluster_id)
        link = resp_link_settings(settings.redis)
        eventlog = EventLog(redis, default_codec(), names, settings.eventlog, link)
        result: dict[str, int] = {}
        try:
            for partition in partition_names(names.cluster_id, settings.eventlog.partitions):
                for key, value in (await replay_registrations(eventlog, names=partition)).items():
                    result[key] = result.get(key, 0) + value
        finally:
            eventlog.close()
    print(
        f"replayed {result['snapshot_bindings']} bindings of the snapshot and {result['events']} registration "
        f"events after it; {result['bindings']} live bindings restored"
    )
    return 0


def cmd_blocks(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    from runtime.settings import StreamSettings

    clear = args.subject if args.blocks_command == "clear" else None
    return _run_async(_blocks(StreamSettings.from_env(env), clear, as_json=args.json))


async def _blocks(settings: StreamSettings, clear: str | None, *, as_json: bool) -> int:
    import json
    from dataclasses import asdict

    from events import StreamNames
    from processors.registrar.blocks import clear_block, list_blocks
    from runtime.connections import open_redis

    names = StreamNames(settings.eventlog.cluster_id)
    async with open_redis(settings.redis) as redis:
        if clear is not None:
            subject, value, lifted = await clear_block(redis, names, clear)
            print(f"{subject.value} {value}: " + ("block lifted" if lifted else "not blocked; failures forgotten"))
            return 0
        blocks = await list_blocks(redis, names)
    for block in blocks:
        print(json.dumps(asdict(block)) if as_json else block.describe())
    if not blocks and not as_json:
        print("no blocks in force")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sbc-sidecar",
        description="jambonz SBC SIP sidecar (registrar, OPTIONS heartbeats), event-sourced over Redis Streams",
    )
    parser.add_argument(
        "--env-file",
        metavar="FILE",
        default=None,
        help=f"read settings from this NAME=value file (default: ${ENV_FILE_VARIABLE}); "
        "variables set in the environment win over it. scripts/serve.sh writes .sidecar.env",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run the service (all roles in one process by default)")
    run.add_argument(
        "--roles",
        default="ingest,processors,projections",
        help="comma list of roles to run: ingest, processors, projections",
    )
    run.set_defaults(func=cmd_run)

    db = commands.add_parser("db", help="database set-up")
    db_commands = db.add_subparsers(dest="db_command", required=True)
    init = db_commands.add_parser("init", help="create the jambonz tables the sidecar uses")
    init.add_argument(
        "--demo",
        action="store_true",
        help="also add a demo account on sip.demo.local with a client demo / demo-password",
    )
    init.add_argument(
        "--webhook-url",
        default=None,
        help="with --demo: check the demo account's passwords with this registration webhook "
        "instead of the clients table",
    )
    init.set_defaults(func=cmd_db_init)

    events = commands.add_parser("events", help="inspect the event streams")
    events_commands = events.add_subparsers(dest="events_command", required=True)
    tail = events_commands.add_parser("tail", help="print events as they arrive, one line each")
    tail.add_argument(
        "--stream",
        action="append",
        default=None,
        help="stream to follow (requests, heartbeats, registrations, servers, carriers, commands, dead); "
        "repeatable; default: all but replies",
    )
    tail.add_argument(
        "--from-start", action="store_true", help="print the retained events first, all streams merged in time order"
    )
    tail.add_argument("--aor", default=None, help="only events about this AOR (user@host, sip:user@host, <sip:...>)")
    tail.add_argument(
        "--sbc", default=None, help="only the requests an SBC received (its ingest id, see `sbcs`) and their decisions"
    )
    tail.add_argument(
        "--type", action="append", default=None, help="only events of this type (e.g. RegisterRejected); repeatable"
    )
    tail.add_argument(
        "--since",
        default=None,
        help="start with the events appended since this time: a duration back from now (90s, 15m, 2h, 1d) "
        "or an ISO 8601 time (UTC unless it names a zone)",
    )
    tail.add_argument("--limit", type=int, default=None, help="stop after this many events")
    tail.set_defaults(func=cmd_events_tail)

    history = commands.add_parser("history", help="the story of one address of record, oldest first")
    history.add_argument("aor", nargs="?", help="user@realm, sip:user@realm, sips:user@realm or <sip:user@realm>")
    history.add_argument("--carrier", default=None, help="the outbound registrations of a carrier (sid or name)")
    history.add_argument("--json", action="store_true", help="one JSON object per line")
    bounds = "a duration back from now (90s, 15m, 2h, 1d) or an ISO 8601 time (UTC unless it names a zone)"
    history.add_argument("--since", default=None, help=f"only the steps from this time on: {bounds}")
    history.add_argument("--until", default=None, help=f"only the steps up to this time: {bounds}")
    history.set_defaults(func=cmd_history)

    replay_cmd = commands.add_parser("replay", help="rebuild a projection from the streams")
    replay_cmd.add_argument("projection", choices=["registrations"])
    replay_cmd.set_defaults(func=cmd_replay)

    blocks = commands.add_parser("blocks", help="source IPs and AORs blocked after failed authentications")
    blocks.add_argument("--json", action="store_true", help="one JSON object per line")
    blocks.set_defaults(func=cmd_blocks, blocks_command=None)
    blocks_commands = blocks.add_subparsers(dest="blocks_command")
    clear = blocks_commands.add_parser("clear", help="lift the block of an IP or an AOR and forget its failures")
    clear.add_argument("subject", help="an IP address, or an AOR (user@host, sip:user@host, <sip:...>)")

    carriers = commands.add_parser("carriers", help="outbound registrations: each gateway's state and next attempt")
    carriers.set_defaults(func=cmd_carriers)

    sbcs = commands.add_parser("sbcs", help="the SBCs sharing the streams: live, and recently stopped or dead")
    sbcs.add_argument("--json", action="store_true", help="one JSON object per line")
    sbcs.set_defaults(func=cmd_sbcs)

    version = commands.add_parser("version", help="print the version")
    version.set_defaults(func=cmd_version)

    for extension in _extensions():
        extension(commands)
    return parser


def _extensions() -> list[Callable[[Any], None]]:
    """Command groups that live beside their feature (the admin `fs` commands)."""
    out: list[Callable[[Any], None]] = []
    try:
        from runtime.admin import add_commands
    except ImportError:
        return out
    out.append(add_commands)
    return out


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    from runtime.inspect import InspectError

    env = os.environ if env is None else env
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args, with_env_file(env, args.env_file)))
    except ConfigError as exc:
        print(f"sbc-sidecar: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except InspectError as exc:
        print(f"sbc-sidecar: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
