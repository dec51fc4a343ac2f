"""The admin socket and CLI (SPEC 5.1, SPEC 6 items 5-6) on the real Redis, directly and over the socket."""

from __future__ import annotations

import asyncio
import io
import json
import os
import stat
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import redis as sync_redis
from redis.asyncio import Redis

from events import StreamNames
from runtime.admin import AdminActions, AdminSocket, canonical_ip, is_valid_ip, is_valid_ipv4, run_admin
from tests.conftest import REDIS_DB, REDIS_HOST, REDIS_PORT

ACTIVE = ["192.168.1.10:5060", "192.168.1.11:5060", "192.168.1.12:5060"]


@pytest.fixture
def env(cluster_id: str) -> dict[str, str]:
    return {
        "JAMBONES_REDIS_HOST": REDIS_HOST,
        "JAMBONES_REDIS_PORT": str(REDIS_PORT),
        "SIDECAR_REDIS_DB": str(REDIS_DB),
        "JAMBONES_CLUSTER_ID": cluster_id,
    }


@pytest.fixture
async def seeded(redis: Redis, names: StreamNames) -> None:
    await redis.sadd(names.active_fs, *ACTIVE)
    await redis.sadd(names.drained_fs, "192.168.1.11")


@pytest.fixture
def socket_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("adm") / "sbc.sock")  # short: a socket path has ~100 bytes


@asynccontextmanager
async def running(server: AdminSocket) -> AsyncIterator[AdminSocket]:
    task = asyncio.create_task(server.run())
    try:
        await asyncio.wait_for(server.ready.wait(), 5)
        yield server
    finally:
        server.stop()
        await asyncio.wait_for(task, 5)


@pytest.fixture
async def admin_socket(redis: Redis, names: StreamNames, socket_path: str) -> AsyncIterator[AdminSocket]:
    async with running(AdminSocket(socket_path, AdminActions(redis, names))) as server:
        yield server


class Cli:
    """Runs CLI words in-process, directly on Redis or through the admin socket."""

    def __init__(self, env: dict[str, str], socket_path: str | None) -> None:
        self.env = env
        self.socket_path = socket_path

    async def __call__(self, *words: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        code = await run_admin(
            words, self.env, use_socket=self.socket_path is not None, socket_path=self.socket_path, out=out, err=err
        )
        return code, out.getvalue(), err.getvalue()


@pytest.fixture(params=["redis", "socket"])
async def cli(
    request: pytest.FixtureRequest,
    env: dict[str, str],
    seeded: None,
    redis: Redis,
    names: StreamNames,
    socket_path: str,
) -> AsyncIterator[Cli]:
    if request.param == "redis":
        yield Cli(env, None)
        return
    async with running(AdminSocket(socket_path, AdminActions(redis, names))) as server:
        yield Cli(env, server.path)


async def drained_set(redis: Redis, names: StreamNames) -> set[str]:
    return {m.decode() for m in await redis.smembers(names.drained_fs)}


# --- the CLI cases of SPEC 6 item 5, each directly on Redis and over the socket -----------------------


async def test_help(cli: Cli):
    code, out, _ = await cli()
    assert code == 0
    assert out.startswith("SBC Runtime CLI")
    assert "fs drain <ip>" in out


async def test_fs_active_lists_available_servers_without_the_drained_one(cli: Cli):
    code, out, _ = await cli("fs", "active")
    assert code == 0
    assert out.splitlines() == ["Available feature servers:", "  🟢 192.168.1.10:5060", "  🟢 192.168.1.12:5060"]


async def test_fs_drained(cli: Cli):
    code, out, _ = await cli("fs", "drained")
    assert code == 0
    assert out.splitlines() == ["Drained servers:", "  🔴 192.168.1.11"]


async def test_fs_list_marks_the_drained_ip_port_member(cli: Cli):
    code, out, _ = await cli("fs", "list")
    assert code == 0
    assert out.splitlines() == [
        "Feature servers:",
        "  🟢 192.168.1.10:5060 (active)",
        "  🔴 192.168.1.11:5060 (drained)",
        "  🟢 192.168.1.12:5060 (active)",
    ]


async def test_drain_then_undrain(cli: Cli, redis: Redis, names: StreamNames):
    code, out, _ = await cli("fs", "drain", "192.168.1.10")
    assert code == 0
    assert out.splitlines() == ["✓ Drained 192.168.1.10", "Drained servers: [192.168.1.10, 192.168.1.11]"]
    assert await drained_set(redis, names) == {"192.168.1.10", "192.168.1.11"}
    assert "192.168.1.10" in (await cli("fs", "drained"))[1]
    active = (await cli("fs", "active"))[1]
    assert active.splitlines() == ["Available feature servers:", "  🟢 192.168.1.12:5060"]
    assert "  🔴 192.168.1.10:5060 (drained)" in (await cli("fs", "list"))[1]

    code, out, _ = await cli("fs", "undrain", "192.168.1.10")
    assert code == 0
    assert out.splitlines() == ["✓ Undrained 192.168.1.10", "Drained servers: [192.168.1.11]"]
    assert await drained_set(redis, names) == {"192.168.1.11"}
    assert "  🟢 192.168.1.10:5060" in (await cli("fs", "active"))[1]


async def test_nothing_drained_and_nothing_active(cli: Cli, redis: Redis, names: StreamNames):
    await redis.delete(names.active_fs)
    code, out, _ = await cli("fs", "list")
    assert (code, out.splitlines()) == (
        0,
        ["No servers configured", "Orphaned drained servers:", "  🔴 192.168.1.11 (orphaned)"],
    )
    assert (await cli("fs", "active"))[1] == "No active feature servers found\n"
    await cli("fs", "undrain", "192.168.1.11")
    assert (await cli("fs", "drained"))[1] == "No servers are currently drained\n"


@pytest.mark.parametrize(
    ("words", "error"),
    [
        (("fs", "drain", "invalid-ip"), "Error: Invalid IP address: invalid-ip"),
        (("fs", "undrain", "192.168.1.256"), "Error: Invalid IP address: 192.168.1.256"),
        (("fs", "drain", "192.168.1.10:5060"), "Error: Invalid IP address: 192.168.1.10:5060"),
        (("fs", "drain"), "Error: drain requires server IP address"),
        (("fs", "undrain"), "Error: undrain requires server IP address"),
        (("fs",), "Error: fs command requires an action"),
        (("fs", "bogus"), "Error: Unknown fs command: bogus. Use: drain, undrain, drained, active, list"),
        (("unknown-command",), "Error: Unknown command: unknown-command. Run without arguments for help."),
    ],
)
async def test_errors_exit_1(cli: Cli, redis: Redis, names: StreamNames, words: tuple[str, ...], error: str):
    code, out, err = await cli(*words)
    assert (code, out, err) == (1, "", error + "\n")
    assert await drained_set(redis, names) == {"192.168.1.11"}


@pytest.mark.parametrize(
    ("given", "stored"),
    [
        ("::1", "::1"),
        ("2001:0db8:85a3:0000:0000:8a2e:0370:7334", "2001:db8:85a3::8a2e:370:7334"),
        ("fe80::1", "fe80::1"),
    ],
)
async def test_ipv6_drain_and_undrain_in_any_spelling(
    cli: Cli, redis: Redis, names: StreamNames, given: str, stored: str
):
    code, out, _ = await cli("fs", "drain", given)
    assert code == 0 and out.startswith(f"✓ Drained {given}\n")
    assert stored in await drained_set(redis, names)
    await redis.sadd(names.active_fs, f"{stored}:5080")
    assert f"  🔴 {stored}:5080 (drained)" in (await cli("fs", "list"))[1]
    code, out, _ = await cli("fs", "undrain", stored.upper())
    assert code == 0 and out.startswith(f"✓ Undrained {stored.upper()}\n")
    assert await drained_set(redis, names) == {"192.168.1.11"}


# --- set/get/list: a running sidecar's config, always over the socket -------------------------------


async def test_set_get_list_over_the_socket(env: dict[str, str], admin_socket: AdminSocket):
    for cli in (Cli(env, admin_socket.path), Cli({**env, "SBC_SOCKET_PATH": admin_socket.path}, None)):
        assert await cli("set", "testKey", "testValue") == (0, '✓ testKey = "testValue"\n', "")
        assert await cli("get", "testKey") == (0, 'testKey = "testValue"\n', "")
        code, out, _ = await cli("list")
        assert code == 0
        assert out.splitlines() == ["Runtime Configuration:", '  testKey = "testValue"']
    assert await Cli(env, admin_socket.path)("get", "nope") == (0, "nope = undefined\n", "")
    assert await Cli(env, admin_socket.path)("set", "k") == (1, "", "Error: set requires key and value\n")
    assert await Cli(env, admin_socket.path)("get") == (1, "", "Error: get requires key\n")


async def test_empty_runtime_config(env: dict[str, str], admin_socket: AdminSocket):
    expected = (0, "Runtime Configuration:\n  (no configuration set)\n", "")
    assert await Cli(env, admin_socket.path)("list") == expected


async def test_no_socket_is_a_connection_error(env: dict[str, str], socket_path: str):
    code, out, err = await Cli(env, socket_path)("fs", "list")
    assert (code, out) == (1, "")
    assert err.startswith("Error: Connection failed: ")
    code, _, err = await Cli({**env, "SBC_SOCKET_PATH": socket_path}, None)("list")
    assert code == 1 and err.startswith("Error: Connection failed: ")


async def test_direct_mode_without_redis_settings_says_so(env: dict[str, str]):
    code, _, err = await Cli({"JAMBONES_CLUSTER_ID": "x"}, None)("fs", "list")
    assert code == 1
    assert "JAMBONES_REDIS_HOST" in err and "--socket" in err


# --- the socket protocol -------------------------------------------------------------------------------


def exists(path: str) -> bool:
    return os.path.exists(path)


def write_text(path: str, text: str) -> None:
    Path(path).write_text(text)


def read_text(path: str) -> str:
    return Path(path).read_text()


async def exchange(path: str, payload: bytes, answers: int) -> list[dict[str, object]]:
    reader, writer = await asyncio.open_unix_connection(path)
    try:
        writer.write(payload)
        await writer.drain()
        lines = [await asyncio.wait_for(reader.readline(), 5) for _ in range(answers)]
    finally:
        writer.close()
        await writer.wait_closed()
    return [json.loads(line) for line in lines]


async def test_socket_protocol_answers_each_line(admin_socket: AdminSocket, seeded: None):
    payload = (
        b"\n".join(
            [
                b'{"action":"nope"}',
                b"{not json",
                b"null",
                b'"just a string"',
                b"   ",
                b'{"action":"add","key":"k","item":"a"}',
                b'{"action":"add","key":"k","item":"a"}',
                b'{"action":"add","key":"k","item":"b"}',
                b'{"action":"remove","key":"k","item":"a"}',
                b'{"action":"list"}',
                b'{"action":"fs-drain"}',
                b'{"action":"fs-drain","server":"10.0.0.1"}',
                b'{"action":"fs-available"}',
                b'{"action":"fs-list"}',
            ]
        )
        + b"\n"
    )
    answers = await exchange(admin_socket.path, payload, 13)
    assert answers == [
        {"success": False, "error": "Unknown action"},
        {"success": False, "error": "Invalid command"},
        {"success": False, "error": "Invalid command"},
        {"success": False, "error": "Unknown action"},
        {"success": True, "key": "k", "item": "a", "array": ["a"], "added": True},
        {"success": True, "key": "k", "item": "a", "array": ["a"], "added": False},
        {"success": True, "key": "k", "item": "b", "array": ["a", "b"], "added": True},
        {"success": True, "key": "k", "item": "a", "array": ["b"], "removed": True},
        {"success": True, "config": {"k": ["b"]}},
        {"success": False, "error": "Invalid IP address: undefined"},
        {"success": True, "action": "drain", "server": "10.0.0.1", "drained": ["10.0.0.1", "192.168.1.11"]},
        {"success": True, "available": ["192.168.1.10:5060", "192.168.1.12:5060"]},
        {
            "success": True,
            "servers": [
                {"server": "192.168.1.10:5060", "status": "active"},
                {"server": "192.168.1.11:5060", "status": "drained"},
                {"server": "192.168.1.12:5060", "status": "active"},
            ],
            "drained": ["10.0.0.1", "192.168.1.11"],
        },
    ]


async def test_socket_file_is_0600_replaces_a_stale_one_and_is_removed_on_stop(
    redis: Redis, names: StreamNames, socket_path: str
):
    import socket

    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(socket_path)  # left behind by a crashed process
    stale.close()
    os.chmod(socket_path, 0o777)
    async with running(AdminSocket(socket_path, AdminActions(redis, names))):
        mode = os.stat(socket_path).st_mode
        assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600
        answers = await exchange(socket_path, b'{"action":"fs-drained"}\n', 1)
        assert answers == [{"success": True, "drained": []}]
        reader, writer = await asyncio.open_unix_connection(socket_path)  # a client still connected at stop
    assert not exists(socket_path)
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()


async def test_a_regular_file_at_the_path_is_not_removed(redis: Redis, names: StreamNames, socket_path: str):
    write_text(socket_path, "not a socket")
    with pytest.raises(OSError):
        await AdminSocket(socket_path, AdminActions(redis, names)).run()
    assert read_text(socket_path) == "not a socket"


async def test_without_redis_fs_actions_say_so(names: StreamNames):
    actions = AdminActions(None, names)
    for action in ("fs-drain", "fs-undrain", "fs-drained", "fs-available", "fs-list"):
        assert await actions.execute({"action": action, "server": "10.0.0.1"}) == {
            "success": False,
            "error": "Redis connection not available",
        }
    assert await actions.execute({"action": "set", "key": "a", "value": 1}) == {"success": True, "key": "a", "value": 1}
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    down = Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0))
    try:
        answer = await AdminActions(down, names).execute({"action": "fs-list"})
    finally:
        await down.aclose()
    assert answer == {"success": False, "error": "Redis connection not available"}


# --- wiring into `sbc-sidecar` ---------------------------------------------------------------------------


def test_sbc_sidecar_fs_commands(env: dict[str, str], names: StreamNames, capsys: pytest.CaptureFixture[str]):
    from runtime.cli import main

    client = sync_redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=REDIS_DB)
    try:
        client.sadd(names.active_fs, *ACTIVE)
        client.sadd(names.drained_fs, "192.168.1.11")
        assert main(["fs", "drain", "192.168.1.12"], env) == 0
        assert capsys.readouterr().out.startswith("✓ Drained 192.168.1.12\n")
        assert main(["fs", "active"], env) == 0
        assert capsys.readouterr().out == "Available feature servers:\n  🟢 192.168.1.10:5060\n"
        assert main(["fs", "drain", "nope"], env) == 1
        assert capsys.readouterr().err == "Error: Invalid IP address: nope\n"
        assert main(["cli"], env) == 0
        assert "SBC Runtime CLI" in capsys.readouterr().out
        assert main(["cli", "unknown-command"], env) == 1
        assert "Unknown command: unknown-command" in capsys.readouterr().err
    finally:
        client.delete(names.active_fs, names.drained_fs)
        client.close()


# --- isValidIP (SPEC 6 items 5-6) ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("192.168.1.1", True),
        ("10.0.0.1", True),
        ("255.255.255.255", True),
        ("0.0.0.0", True),
        ("127.0.0.1", True),
        ("1.2.3.4", True),
        ("192.168.0.255", True),
        ("255.0.0.0", True),
        ("", False),
        ("192.168.1", False),
        ("192.168.1.256", False),
        ("256.1.1.1", False),
        ("192.168.1.2.3", False),
        ("192.168.a.1", False),
        ("192..1.1", False),
        (".192.168.1.1", False),
        ("192.168.1.1.", False),
        (" 192.168.1.1 ", False),
        ("192.168.1.1\n", False),
        ("192,168,1,1", False),
        ("2001:0db8:85a3:0000:0000:8a2e:0370:7334", False),
        ("localhost", False),
        ("10.0.0.1/24", False),
        ("991240413047.primary.companyflex.de:0", False),
        ("192.168.1.1:5060", False),
        (None, False),
    ],
)
def test_is_valid_ipv4(text: object, expected: bool):
    assert is_valid_ipv4(text) is expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("192.168.1.1", True),
        ("::1", True),
        ("::", True),
        ("2001:0db8:85a3:0000:0000:8a2e:0370:7334", True),
        ("2001:db8::8a2e:370:7334", True),
        ("fe80::1", True),
        ("::ffff:192.0.2.1", True),
        ("256.1.1.1", False),
        ("192.168.1", False),
        ("", False),
        (None, False),
        ("not-an-ip", False),
        ("fe80::1%eth0", False),
        ("2001:db8::g", False),
        ("1:2:3:4:5:6:7:8:9", False),
        ("[::1]", False),
        ("::1:5060:", False),
        (":::", False),
    ],
)
def test_is_valid_ip(text: object, expected: bool):
    assert is_valid_ip(text) is expected


def test_canonical_ip():
    assert canonical_ip("010.001.000.009") == "10.1.0.9"
    assert canonical_ip("2001:0DB8:0000:0000:0000:0000:0000:0001") == "2001:db8::1"
