"""The `sbc-sidecar` command: run, db init, events tail, history, replay, fs ..., version."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Callable, Coroutine, Mapping, Sequence
from importlib import metadata
from typing import Any

from runtime.errors import ConfigError

EXIT_CONFIG = 2


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
    return _run_async(app.run(settings, roles, tune_gc=True))


def cmd_db_init(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    from runtime.database import init_database, mysql_settings_from_env

    settings = mysql_settings_from_env(env)
    secret = env.get("ENCRYPTION_SECRET") or env.get("JWT_SECRET") or ""
    return _run_async(init_database(settings, demo=args.demo, encryption_secret=secret, webhook_url=args.webhook_url))


def cmd_events_tail(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    from runtime.inspect import tail_events
    from runtime.settings import Settings

    settings = Settings.from_env(env)
    return _run_async(tail_events(settings, streams=args.stream, from_start=args.from_start, limit=args.limit))


def cmd_history(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    from projections.history import print_history
    from runtime.settings import Settings

    return _run_async(print_history(Settings.from_env(env), args.aor, as_json=args.json))


def cmd_replay(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    from projections.replay import replay
    from runtime.settings import Settings

    return _run_async(replay(Settings.from_env(env), args.projection))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sbc-sidecar",
        description="jambonz SBC SIP sidecar (registrar, OPTIONS heartbeats), event-sourced over Redis Streams",
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
    init.add_argument("--demo", action="store_true", help="also add a demo account, webhook and client")
    init.add_argument(
        "--webhook-url",
        default="http://127.0.0.1:4000/auth",
        help="registration webhook url of the demo account",
    )
    init.set_defaults(func=cmd_db_init)

    events = commands.add_parser("events", help="inspect the event streams")
    events_commands = events.add_subparsers(dest="events_command", required=True)
    tail = events_commands.add_parser("tail", help="print events as they arrive, one line each")
    tail.add_argument(
        "--stream",
        action="append",
        default=None,
        help="stream to follow (requests, registrations, servers, carriers, commands, dead); "
        "repeatable; default: all but replies",
    )
    tail.add_argument("--from-start", action="store_true", help="print the retained history first")
    tail.add_argument("--limit", type=int, default=None, help="stop after this many events")
    tail.set_defaults(func=cmd_events_tail)

    history = commands.add_parser("history", help="the story of one address of record, oldest first")
    history.add_argument("aor", help="user@realm")
    history.add_argument("--json", action="store_true", help="one JSON object per line")
    history.set_defaults(func=cmd_history)

    replay_cmd = commands.add_parser("replay", help="rebuild a projection from the streams")
    replay_cmd.add_argument("projection", choices=["registrations"])
    replay_cmd.set_defaults(func=cmd_replay)

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
    env = os.environ if env is None else env
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args, env))
    except ConfigError as exc:
        print(f"sbc-sidecar: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
