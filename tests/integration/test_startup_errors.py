"""`sbc-sidecar run` against stores that cannot serve: one line naming the setting and the cause, exit status 2,
no traceback. Private redis-servers (a password, Cluster mode, a Sentinel) are started by the tests on free ports."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis as redis_sync

from tests.conftest import MYSQL_HOST, MYSQL_PORT, REDIS_DB, REDIS_HOST, REDIS_PORT, free_port

ROOT = Path(__file__).resolve().parents[2]
REDIS_SERVER = shutil.which("redis-server")
PASSWORD = "startup-secret"

pytestmark = pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed")


def run_sidecar(tmp_path: Path, **overrides: str) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "JAMBONES_MYSQL_HOST": MYSQL_HOST,
        "JAMBONES_MYSQL_PORT": str(MYSQL_PORT),
        "JAMBONES_MYSQL_USER": "root",
        "JAMBONES_MYSQL_PASSWORD": "",
        "JAMBONES_MYSQL_DATABASE": "mysql",
        "JAMBONES_REDIS_HOST": REDIS_HOST,
        "JAMBONES_REDIS_PORT": str(REDIS_PORT),
        "SIDECAR_REDIS_DB": str(REDIS_DB),
        "JAMBONES_CLUSTER_ID": f"startup{os.getpid()}",
        "ENCRYPTION_SECRET": "test-encryption-secret",
        "SIDECAR_SIP_LISTEN": f"udp:127.0.0.1:{free_port()}",
        "SIDECAR_HTTP_LISTEN": f"127.0.0.1:{free_port()}",
        "SBC_SOCKET_PATH": str(tmp_path / "admin.sock"),
        **overrides,
    }
    return subprocess.run(
        [sys.executable, "-m", "runtime.cli", "run"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def assert_one_line(result: subprocess.CompletedProcess[str], variable: str, *cause: str) -> str:
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    line = lines[0]
    assert line.startswith(f"sbc-sidecar: configuration error: {variable} "), line
    for words in cause:
        assert words in line, line
    return line


def start_redis(tmp_path: Path, name: str, *args: str) -> Iterator[int]:
    assert REDIS_SERVER is not None
    port = free_port()
    workdir = tmp_path / name
    workdir.mkdir()
    command = [REDIS_SERVER, *args, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", str(workdir)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                redis_sync.Redis(host="127.0.0.1", port=port, socket_connect_timeout=0.2).ping()
                break
            except redis_sync.AuthenticationError:
                break  # up, and wants a password
            except redis_sync.ConnectionError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise
                time.sleep(0.05)
        yield port
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture
def redis_with_password(tmp_path: Path) -> Iterator[int]:
    yield from start_redis(tmp_path, "auth", "--requirepass", PASSWORD)


@pytest.fixture
def redis_cluster_node(tmp_path: Path) -> Iterator[int]:
    node = tmp_path / "cluster-node"
    # The cluster bus listens on a port of its own: by default the client port + 10000, past 65535 for a high
    # ephemeral port (the server then exits), so it gets a free port of its own too.
    yield from start_redis(
        tmp_path,
        "cluster",
        "--cluster-enabled",
        "yes",
        "--cluster-config-file",
        f"{node}.conf",
        "--cluster-port",
        str(free_port()),
    )


@pytest.fixture
def sentinel(tmp_path: Path) -> Iterator[int]:
    config = tmp_path / "sentinel.conf"  # the Sentinel rewrites it: a file of the test's own
    config.write_text(f"sentinel monitor mymaster 127.0.0.1 {free_port()} 1\n")
    yield from start_redis(tmp_path, "sentinel", str(config), "--sentinel")


def test_redis_unreachable(tmp_path: Path) -> None:
    port = free_port()
    result = run_sidecar(tmp_path, JAMBONES_REDIS_PORT=str(port))
    assert_one_line(result, "JAMBONES_REDIS_HOST", f"127.0.0.1:{port}", "Redis unreachable", "refused")


def test_redis_wrong_password(tmp_path: Path, redis_with_password: int) -> None:
    port = str(redis_with_password)
    wrong = run_sidecar(tmp_path, JAMBONES_REDIS_PORT=port, JAMBONES_REDIS_PASSWORD="not-it", SIDECAR_REDIS_DB="0")
    assert_one_line(wrong, "JAMBONES_REDIS_PASSWORD", f"refused by 127.0.0.1:{port}", "WRONGPASS")
    assert "not-it" not in wrong.stderr
    missing = run_sidecar(tmp_path, JAMBONES_REDIS_PORT=port, SIDECAR_REDIS_DB="0")
    assert_one_line(missing, "JAMBONES_REDIS_PASSWORD", "is not set", "requires a password")


def test_redis_acl_denied(tmp_path: Path, redis_with_password: int) -> None:
    admin = redis_sync.Redis(host="127.0.0.1", port=redis_with_password, password=PASSWORD)
    admin.execute_command("ACL", "SETUSER", "limited", "on", ">limited-pw", "~*", "-@all", "+auth", "+hello")
    result = run_sidecar(
        tmp_path,
        JAMBONES_REDIS_PORT=str(redis_with_password),
        JAMBONES_REDIS_USERNAME="limited",
        JAMBONES_REDIS_PASSWORD="limited-pw",
        SIDECAR_REDIS_DB="0",
    )
    assert_one_line(result, "JAMBONES_REDIS_USERNAME", "'limited' lacks a permission", "NOPERM")


def test_redis_cluster_that_does_not_serve_or_with_a_database(tmp_path: Path, redis_cluster_node: int) -> None:
    """A lone Cluster node (no slots assigned: the cluster was never created) and a database other than 0."""
    port = str(redis_cluster_node)
    result = run_sidecar(tmp_path, JAMBONES_REDIS_PORT=port, SIDECAR_REDIS_DB="0")
    assert_one_line(
        result,
        "JAMBONES_REDIS_HOST",
        f"127.0.0.1:{port} is a node of a Redis Cluster that does not serve",
        "cluster_state:fail",
    )
    with_db = run_sidecar(tmp_path, JAMBONES_REDIS_PORT=port, SIDECAR_REDIS_DB="3")
    assert_one_line(with_db, "SIDECAR_REDIS_DB", "is 3", f"127.0.0.1:{port} is a Redis Cluster node")


def test_sentinel_with_a_wrong_master_name(tmp_path: Path, sentinel: int) -> None:
    result = run_sidecar(
        tmp_path,
        JAMBONES_REDIS_SENTINELS=f"127.0.0.1:{sentinel}",
        JAMBONES_REDIS_SENTINEL_MASTER_NAME="no-such-master",
    )
    assert_one_line(
        result, "JAMBONES_REDIS_SENTINEL_MASTER_NAME", "'no-such-master' is not a master", f"127.0.0.1:{sentinel}"
    )


def test_sentinels_unreachable(tmp_path: Path) -> None:
    port = free_port()
    result = run_sidecar(
        tmp_path, JAMBONES_REDIS_SENTINELS=f"127.0.0.1:{port}", JAMBONES_REDIS_SENTINEL_MASTER_NAME="mymaster"
    )
    assert_one_line(result, "JAMBONES_REDIS_SENTINELS", "no Sentinel answers", "refused")


def test_mysql_wrong_password(tmp_path: Path) -> None:
    result = run_sidecar(tmp_path, JAMBONES_MYSQL_PASSWORD="not-the-password")
    assert_one_line(result, "JAMBONES_MYSQL_PASSWORD", f"MySQL at {MYSQL_HOST}:{MYSQL_PORT}", "Access denied")
    assert "not-the-password" not in result.stderr


def test_mysql_unreachable(tmp_path: Path) -> None:
    port = free_port()
    result = run_sidecar(tmp_path, JAMBONES_MYSQL_PORT=str(port))
    assert_one_line(result, "JAMBONES_MYSQL_HOST", f"127.0.0.1:{port}: MySQL unreachable")


def test_mysql_unknown_database(tmp_path: Path) -> None:
    result = run_sidecar(tmp_path, JAMBONES_MYSQL_DATABASE="sbc_no_such_database")
    assert_one_line(result, "JAMBONES_MYSQL_DATABASE", "'sbc_no_such_database' does not exist", "db init")


def test_a_sip_port_in_use(tmp_path: Path) -> None:
    """The listeners start with the workers: what they logged comes first, then the one line, exit 2, and the process
    ends (its reply reader is stopped too, not left waiting)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        result = run_sidecar(tmp_path, SIDECAR_SIP_LISTEN=f"udp:127.0.0.1:{port}")
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("sbc-sidecar: configuration error: SIDECAR_SIP_LISTEN "), last
    assert f"udp:127.0.0.1:{port} cannot be listened on" in last
