"""A real local Redis Cluster of three masters, for the tests and `bench/run --redis-cluster`: `redis-server
--cluster-enabled yes` on three free loopback ports (each with a free bus port), joined by `redis-cli --cluster create`.
For the tests with an append-only file, so a master restarted by a test comes back with its data, as a production
master with persistence does; for the bench without, like its single Redis."""

from __future__ import annotations

import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis as redis_sync

from bench.infrastructure import free_port

REDIS_SERVER = shutil.which("redis-server")
REDIS_CLI = shutil.which("redis-cli")
START_TIMEOUT_S = 20.0


@dataclass
class Master:
    port: int
    bus_port: int
    workdir: Path
    persistent: bool = True  # an append-only file, fsynced at every write (a restart keeps everything)
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        assert REDIS_SERVER is not None
        command = [
            REDIS_SERVER,
            "--port", str(self.port),
            "--cluster-port", str(self.bus_port),
            "--bind", "127.0.0.1",
            "--cluster-enabled", "yes",
            "--cluster-config-file", str(self.workdir / "nodes.conf"),
            "--cluster-node-timeout", "2000",
            "--save", "",
            "--appendonly", "yes" if self.persistent else "no",
            "--appendfsync", "always",
            "--dir", str(self.workdir),
        ]  # fmt: skip
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                redis_sync.Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=0.2).ping()
                return
            except redis_sync.ConnectionError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise
                time.sleep(0.05)

    def stop(self, *, kill: bool = False) -> None:
        if self.process is None:
            return
        if kill:
            self.process.kill()
        else:
            self.process.terminate()
        self.process.wait(timeout=15)
        self.process = None

    def client(self) -> redis_sync.Redis:
        return redis_sync.Redis(host="127.0.0.1", port=self.port)


@dataclass
class LocalCluster:
    masters: list[Master] = field(default_factory=list)

    @property
    def ports(self) -> list[int]:
        return [master.port for master in self.masters]

    def owner_of(self, key: str) -> Master:
        """The master that serves a key's slot."""
        slot = int(self.masters[0].client().execute_command("CLUSTER", "KEYSLOT", key))
        for first, last, node, *_ in self.masters[0].client().execute_command("CLUSTER", "SLOTS"):
            if first <= slot <= last:
                port = int(node[1])
                return next(master for master in self.masters if master.port == port)
        raise AssertionError(f"no master serves slot {slot}")

    def wait_ok(self, timeout_s: float = START_TIMEOUT_S) -> None:
        """Until every master says cluster_state:ok."""
        deadline = time.monotonic() + timeout_s
        while True:
            states = []
            for master in self.masters:
                try:
                    info = master.client().execute_command("CLUSTER", "INFO")
                except redis_sync.ConnectionError:
                    states.append("down")
                    continue
                text = info.decode() if isinstance(info, bytes) else str(info)
                states.append("ok" if "cluster_state:ok" in text else "fail")
            if all(state == "ok" for state in states):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"the cluster did not become ok: {states}")
            time.sleep(0.1)

    def stop(self) -> None:
        for master in self.masters:
            master.stop()


def start_cluster(workdir: Path, *, persistent: bool = True) -> LocalCluster:
    """Three masters, the 16384 slots split between them, no replicas. `persistent`: each with an append-only file
    fsynced at every write, so a master restarted keeps its data; without, nothing on disk, like the bench's
    single Redis (an fsync per write costs a millisecond or two here, which a benchmark must not compare)."""
    assert REDIS_SERVER is not None and REDIS_CLI is not None, "redis-server and redis-cli (Debian's redis)"
    cluster = LocalCluster()
    try:
        for index in range(3):
            node_dir = workdir / f"master-{index}"
            node_dir.mkdir(parents=True)
            master = Master(free_port(), free_port(), node_dir, persistent)
            master.start()
            cluster.masters.append(master)
        create = [REDIS_CLI, "--cluster", "create", *(f"127.0.0.1:{p}" for p in cluster.ports)]
        create += ["--cluster-replicas", "0", "--cluster-yes"]
        subprocess.run(create, check=True, capture_output=True, timeout=60)
        cluster.wait_ok()
    except BaseException:
        cluster.stop()
        raise
    return cluster
