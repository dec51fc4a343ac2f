"""Feature-server and RTP-server heartbeats over real SIP (issue 5, "Must show"; SPEC 3 and SPEC 6 item 4).

The servers are UDP sockets bound to 127.0.0.20, .21 and .22 (all of 127/8 reaches loopback on Linux),
each keeping its source port, since a feature server's member is `<source ip>:<source port>`.
"""

from __future__ import annotations

import asyncio
import io
import secrets
import time
from collections.abc import AsyncIterator
from typing import cast

import pytest
from redis.asyncio import Redis

from events import ServerCheckedIn, ServerExpired, ServerLeft, default_codec
from runtime.admin import run_admin
from tests.conftest import base_env
from tests.e2e.conftest import Sidecar, start_sidecar, stop_sidecar

FS1_IP, FS2_IP, EXTERNAL_IP = "127.0.0.20", "127.0.0.21", "127.0.0.22"
FS1_URL, FS2_URL = "http://127.0.0.1:3000", "http://127.0.0.1:3001"


class Peer(asyncio.DatagramProtocol):
    """A server pinging the SBC from one fixed source address and port."""

    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.answers: asyncio.Queue[bytes] = asyncio.Queue()

    @classmethod
    async def bind(cls, ip: str) -> Peer:
        _, peer = await asyncio.get_running_loop().create_datagram_endpoint(cls, local_addr=(ip, 0))
        return peer

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.answers.put_nowait(data)

    @property
    def address(self) -> tuple[str, int]:
        assert self.transport is not None
        ip, port = self.transport.get_extra_info("sockname")[:2]
        return str(ip), int(port)

    @property
    def member(self) -> str:
        return "{}:{}".format(*self.address)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    async def options(self, sbc_port: int, **headers: str) -> dict[str, str]:
        """Sends an OPTIONS with these X- headers (underscores become dashes); returns the 200's headers.

        Retransmits every 500 ms (Timer E) for up to 5 s; the answer is matched by Call-ID.
        """
        assert self.transport is not None
        ip, port = self.address
        call_id = secrets.token_hex(8)
        extra = "".join(f"{name.replace('_', '-')}: {value}\r\n" for name, value in headers.items())
        request = (
            f"OPTIONS sip:127.0.0.1:{sbc_port} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {ip}:{port};branch=z9hG4bK{call_id};rport\r\n"
            f"Max-Forwards: 70\r\nFrom: <sip:ping@{ip}:{port}>;tag={call_id[:6]}\r\nTo: <sip:127.0.0.1:{sbc_port}>\r\n"
            f"Call-ID: {call_id}\r\nCSeq: 1 OPTIONS\r\n{extra}Content-Length: 0\r\n\r\n"
        ).encode()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            self.transport.sendto(request, ("127.0.0.1", sbc_port))
            try:
                while True:
                    data = await asyncio.wait_for(self.answers.get(), 0.5)
                    status_line, *lines = data.split(b"\r\n\r\n", 1)[0].decode().split("\r\n")
                    answer = {
                        name.strip().lower(): value.strip() for name, _, value in (h.partition(":") for h in lines)
                    }
                    if answer.get("call-id") == call_id:
                        assert status_line == "SIP/2.0 200 OK", status_line
                        return answer
            except TimeoutError:
                continue
        raise TimeoutError(f"no answer to OPTIONS {call_id}")


@pytest.fixture
async def peers() -> AsyncIterator[dict[str, Peer]]:
    bound = {"fs1": await Peer.bind(FS1_IP), "fs2": await Peer.bind(FS2_IP), "external": await Peer.bind(EXTERNAL_IP)}
    try:
        yield bound
    finally:
        for peer in bound.values():
            peer.close()


async def server_sets(redis: Redis, sidecar: Sidecar) -> tuple[set[str], set[str], set[str]]:
    names = sidecar.names
    values = []
    for key in (names.active_fs, names.active_rtp, names.fs_service_url):
        values.append({member.decode() for member in await redis.smembers(key)})
    return values[0], values[1], values[2]


async def test_spec_options_sequence_and_drain(
    sidecar: Sidecar, redis: Redis, peers: dict[str, Peer], mysql_db: str
) -> None:
    fs1, fs2, external = peers["fs1"], peers["fs2"], peers["external"]
    port = sidecar.udp_port

    def fs(peer: Peer, status: str) -> dict[str, str]:
        url = FS1_URL if peer is fs1 else FS2_URL
        return {"X_FS_Status": status, "X_FS_Calls": "0", "X_FS_ServiceUrl": url}

    rtp = {"open": {"X_RTP_Status": "open", "X_RTP_Calls": "0"}, "closed": {"X_RTP_Status": "closed"}}
    m1, m2 = fs1.member, fs2.member
    steps = [  # SPEC 6 item 4: who, headers, X-Members, then active-fs, active-rtp, fs-service-url
        (fs1, fs(fs1, "open"), "1", {m1}, set(), {FS1_URL}),
        (fs1, rtp["open"], "1", {m1}, {FS1_IP}, {FS1_URL}),
        (fs2, fs(fs2, "open"), "2", {m1, m2}, {FS1_IP}, {FS1_URL, FS2_URL}),
        (fs2, fs(fs2, "open"), "2", {m1, m2}, {FS1_IP}, {FS1_URL, FS2_URL}),
        (fs2, rtp["open"], "2", {m1, m2}, {FS1_IP, FS2_IP}, {FS1_URL, FS2_URL}),
        (fs1, fs(fs1, "closed"), "1", {m2}, {FS1_IP, FS2_IP}, {FS2_URL}),
        (fs1, rtp["closed"], "1", {m2}, {FS2_IP}, {FS2_URL}),
        (fs2, fs(fs2, "closed"), "0", set(), {FS2_IP}, set()),
        (fs2, rtp["closed"], "0", set(), set(), set()),
        (external, {}, None, set(), set(), set()),  # a plain OPTIONS: no X-Members, no change
        (fs1, fs(fs1, "open"), "1", {m1}, set(), {FS1_URL}),
        # RTP wins when both headers are present (SPEC 3): a member of active-rtp, by IP only
        (fs2, {**rtp["open"], "X_FS_Status": "open"}, "1", {m1}, {FS2_IP}, {FS1_URL}),
    ]
    for n, (peer, headers, members, active_fs, active_rtp, urls) in enumerate(steps, 1):
        answer = await peer.options(port, **headers)
        assert answer.get("x-members") == members, (n, answer)
        assert await server_sets(redis, sidecar) == (active_fs, active_rtp, urls), n

    # Drain fs1 through the running sidecar's admin socket: it is listed as drained, and its next
    # `open` counts as `closed`, so it leaves the pool with its service URL.
    env = base_env(sidecar.names.cluster_id, mysql_db)
    out, err = io.StringIO(), io.StringIO()
    assert (
        await run_admin(
            ["fs", "drain", FS1_IP], env, use_socket=True, socket_path=sidecar.settings.socket_path, out=out, err=err
        )
        == 0
    ), err.getvalue()
    assert out.getvalue() == f"✓ Drained {FS1_IP}\nDrained servers: [{FS1_IP}]\n"
    await fs2.options(port, **fs(fs2, "open"))
    out = io.StringIO()
    assert await run_admin(["fs", "list"], env, out=out) == 0
    assert out.getvalue() == f"Feature servers:\n  🔴 {m1} (drained)\n  🟢 {m2} (active)\n"
    answer = await fs1.options(port, **fs(fs1, "open"))
    assert answer["x-members"] == "1"
    assert await server_sets(redis, sidecar) == ({m2}, {FS2_IP}, {FS2_URL})
    assert await redis.smembers(sidecar.names.drained_fs) == {FS1_IP.encode()}

    out = io.StringIO()
    assert await run_admin(["fs", "undrain", FS1_IP], env, out=out) == 0  # over Redis, no socket
    assert out.getvalue() == f"✓ Undrained {FS1_IP}\nDrained servers: []\n"
    answer = await fs1.options(port, **fs(fs1, "open"))
    assert answer["x-members"] == "2"
    assert await server_sets(redis, sidecar) == ({m1, m2}, {FS2_IP}, {FS1_URL, FS2_URL})

    codec = default_codec()
    facts = [codec.decode(fields) for _, fields in await redis.xrange(sidecar.names.servers)]
    left = [f for f in facts if isinstance(f, ServerLeft) and f.member == m1]
    assert [(f.status, f.drained) for f in left] == [("closed", False), ("closed", True)]
    assert all(f.kind == "fs" for f in left)


@pytest.fixture
async def short_expiry(cluster_id: str, mysql_db: str, redis: Redis) -> AsyncIterator[tuple[Sidecar, Sidecar]]:
    """Two sidecars of one cluster sweeping silent servers after 2 s; the second takes no SIP (processors only)."""
    env = {"EXPIRES_INTERVAL": "2000", "CHECK_EXPIRES_INTERVAL": "500"}
    first = await start_sidecar(cluster_id, mysql_db, env=env)
    try:
        second = await start_sidecar(cluster_id, mysql_db, env=env, roles=("processors",))
        try:
            yield first, second
        finally:
            await stop_sidecar(second)
    finally:
        await stop_sidecar(first)


async def test_a_silent_server_expires_once_and_a_live_one_stays(
    short_expiry: tuple[Sidecar, Sidecar], redis: Redis, peers: dict[str, Peer]
) -> None:
    sidecar, _ = short_expiry  # the second sidecar sweeps too, but hears no heartbeat at all
    fs1, fs2 = peers["fs1"], peers["fs2"]
    port = sidecar.udp_port
    silent = await fs1.options(port, X_FS_Status="open", X_FS_ServiceUrl=FS1_URL)
    assert silent["x-members"] == "1"
    await fs1.options(port, X_RTP_Status="open")
    checked_in = time.monotonic()

    async def keep_alive() -> None:
        while True:
            await fs2.options(port, X_FS_Status="open", X_FS_ServiceUrl=FS2_URL)
            await asyncio.sleep(0.4)

    pinger = asyncio.create_task(keep_alive())
    try:
        deadline = checked_in + 6
        while (await server_sets(redis, sidecar))[0] != {fs2.member}:
            assert time.monotonic() < deadline, "the silent feature server never expired"
            await asyncio.sleep(0.05)
        gone_after = time.monotonic() - checked_in
        assert gone_after >= 1.9  # not before EXPIRES_INTERVAL
        while (await server_sets(redis, sidecar))[1:] != (set(), {FS2_URL}):
            assert time.monotonic() < deadline, "the silent RTP server or service URL never expired"
            await asyncio.sleep(0.05)
        await asyncio.sleep(1.1)  # two more sweeps of each sidecar: nothing expires twice, the live one stays
        assert await server_sets(redis, sidecar) == ({fs2.member}, set(), {FS2_URL})
    finally:
        pinger.cancel()
        await asyncio.gather(pinger, return_exceptions=True)

    codec = default_codec()
    facts = [codec.decode(fields) for _, fields in await redis.xrange(sidecar.names.servers)]
    expired = sorted((f.kind, f.member) for f in facts if isinstance(f, ServerExpired))
    assert expired == [("fs", fs1.member), ("rtp", FS1_IP), ("service-url", FS1_URL)]
    assert sum(isinstance(f, ServerCheckedIn) and f.member == fs2.member for f in facts) >= 5
