"""Phones that keep their registration: the soak's client (bench/soak.py).

Each phone is a bench user with a UDP socket of its own, so it refreshes from the same source
address and port every time, as a phone does, and the service can answer it from its cached
binding (SPEC 2.3). A phone runs one transaction at a time and retransmits its request like a
UDP user agent (RFC 3261 17.1.2: after T1, doubling up to T2, giving up after 64×T1). A refresh
that is challenged anyway is answered with the digest, and counted as such.

`Fleet.round` drives some of the phones at a bounded rate of transactions per second (a full
registration is two: REGISTER → 401, REGISTER with the digest → 200; a cached refresh is one);
`Fleet.move` gives phones a new source port (a new socket), as a NAT rebinding or a reboot does.
"""

from __future__ import annotations

import asyncio
import os
import resource
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import cast

from bench.digest import authorization, user_name
from bench.probe import SipAnswer, parse_answer, percentiles

T1_S = 0.5
T2_S = 4.0
TRANSACTION_TIMEOUT_S = 64 * T1_S
REGISTER_EXPIRES_S = 3600  # far from the 30 s before expiry under which the cache no longer answers
MAX_IN_FLIGHT = 2000  # phones in a transaction at once, whatever the rate (a stalled service)
SOCKETS_SPARE = 256  # descriptors beyond one per phone: Redis, MySQL, the loop, the children's pipes
OPEN_BATCH = 500


class TransactionTimeout(Exception):
    """No final answer within 64×T1."""


class _PhoneSocket(asyncio.DatagramProtocol):
    """One phone's UDP socket: the final answer to the request in flight (matched by its CSeq)."""

    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.waiting: tuple[str, asyncio.Future[SipAnswer]] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)  # uvloop's is no subclass of it

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        parsed = parse_answer(data)
        if parsed is None or parsed[1].status < 200 or self.waiting is None:
            return
        key, future = self.waiting
        if parsed[0] == key and not future.done():
            future.set_result(parsed[1])


@dataclass
class RoundTally:
    """What the phones of one round did."""

    phones: int = 0
    cached: int = 0  # 200 to the first REGISTER
    full: int = 0  # 401, then 200 to the REGISTER with the digest
    transactions: int = 0  # requests sent, not counting retransmissions
    retransmissions: int = 0
    failures: Counter[str] = field(default_factory=Counter)
    latencies_ms: list[float] = field(default_factory=list)  # first request to the 200
    elapsed_s: float = 0.0

    def as_dict(self) -> dict[str, object]:
        return {
            "phones": self.phones,
            "cached": self.cached,
            "full": self.full,
            "failed": sum(self.failures.values()),
            "failures": dict(self.failures),
            "transactions": self.transactions,
            "retransmissions": self.retransmissions,
            "elapsed_s": round(self.elapsed_s, 3),
            "transactions_per_s": round(self.transactions / self.elapsed_s, 1) if self.elapsed_s else None,
            "latency": percentiles(sorted(self.latencies_ms)),
        }


class Phone:
    """One bench user registering from its own socket; Call-ID kept, CSeq counted up, like a phone."""

    def __init__(self, index: int, *, realm: str, password: str, target: tuple[str, int]) -> None:
        self.user = user_name(index)
        self.realm = realm
        self.password = password
        self.target = target
        self.call_id = f"soak-{os.urandom(6).hex()}-{self.user}"
        self.tag = os.urandom(4).hex()
        self.cseq = 0
        self.local_port = 0
        self._socket = _PhoneSocket()

    async def open(self) -> None:
        """A new socket on a new ephemeral port (bound before the old one closes, so the port differs)."""
        loop = asyncio.get_running_loop()
        fresh = _PhoneSocket()
        transport, _ = await loop.create_datagram_endpoint(lambda: fresh, local_addr=("127.0.0.1", 0))
        self.close()
        self._socket = fresh
        self.local_port = transport.get_extra_info("sockname")[1]

    def close(self) -> None:
        if self._socket.transport is not None:
            self._socket.transport.close()

    async def register(self, tally: RoundTally) -> None:
        """REGISTER; when challenged, REGISTER again with the digest. Counts how it ended."""
        started = time.perf_counter()
        try:
            first = await self._transaction(None, tally)
            if first.status == 401 and "www-authenticate" in first.headers:
                answer = authorization(
                    first.headers["www-authenticate"], username=self.user, password=self.password, uri=self._uri
                )
                second = await self._transaction(answer, tally)
                if second.status != 200:
                    tally.failures[f"second answer {second.status}"] += 1
                    return
                tally.full += 1
            elif first.status == 200:
                tally.cached += 1
            else:
                tally.failures[f"first answer {first.status}"] += 1
                return
        except TransactionTimeout:
            tally.failures["timeout"] += 1
            return
        tally.latencies_ms.append((time.perf_counter() - started) * 1000)

    @property
    def _uri(self) -> str:
        return f"sip:{self.realm}"

    async def _transaction(self, authorization_value: str | None, tally: RoundTally) -> SipAnswer:
        """Sends one REGISTER and retransmits it until a final answer comes or 64×T1 passed."""
        self.cseq += 1
        message = self._message(authorization_value)
        future: asyncio.Future[SipAnswer] = asyncio.get_running_loop().create_future()
        self._socket.waiting = (f"{self.call_id} {self.cseq}", future)
        transport = self._socket.transport
        assert transport is not None
        tally.transactions += 1
        interval_s, deadline = T1_S, time.monotonic() + TRANSACTION_TIMEOUT_S
        try:
            while True:
                transport.sendto(message, self.target)
                done, _ = await asyncio.wait((future,), timeout=max(0.0, min(interval_s, deadline - time.monotonic())))
                if done:
                    return future.result()
                if time.monotonic() >= deadline:
                    raise TransactionTimeout
                tally.retransmissions += 1
                interval_s = min(2 * interval_s, T2_S)
        finally:
            self._socket.waiting = None

    def _message(self, authorization_value: str | None) -> bytes:
        aor = f"sip:{self.user}@{self.realm}"
        lines = [
            f"REGISTER {self._uri} SIP/2.0",
            f"Via: SIP/2.0/UDP 127.0.0.1:{self.local_port};branch=z9hG4bK{os.urandom(6).hex()};rport",
            "Max-Forwards: 70",
            f"From: <{aor}>;tag={self.tag}",
            f"To: <{aor}>",
            f"Call-ID: {self.call_id}",
            f"CSeq: {self.cseq} REGISTER",
            f"Contact: <sip:{self.user}@127.0.0.1:{self.local_port};transport=udp>;expires={REGISTER_EXPIRES_S}",
            f"Expires: {REGISTER_EXPIRES_S}",
            "User-Agent: sbc-bench-soak",
        ]
        if authorization_value is not None:
            lines.append(f"Authorization: {authorization_value}")
        lines += ["Content-Length: 0", "", ""]
        return "\r\n".join(lines).encode()


class Pacer:
    """Hands out send times `1/rate` apart per transaction; never ahead of the clock, never bursting."""

    def __init__(self, rate_per_s: float) -> None:
        self._interval_s = 1.0 / rate_per_s
        self._next_at: float | None = None

    async def take(self, transactions: int) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        at = now if self._next_at is None or self._next_at < now else self._next_at
        self._next_at = at + transactions * self._interval_s
        if at - now > 0.001:
            await asyncio.sleep(at - now)


class Fleet:
    """`count` phones (users u000000 upward), each with its own socket, closed on the way out."""

    def __init__(self, count: int, *, target_port: int, realm: str, password: str) -> None:
        target = ("127.0.0.1", target_port)
        self.realm = realm
        self.phones = [Phone(index, realm=realm, password=password, target=target) for index in range(count)]

    async def __aenter__(self) -> Fleet:
        _allow_descriptors(len(self.phones) + SOCKETS_SPARE)
        try:
            await self.move(self.phones)
        except BaseException:
            self._close()
            raise
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._close()

    def _close(self) -> None:
        for phone in self.phones:
            phone.close()

    @staticmethod
    async def move(phones: Sequence[Phone]) -> None:
        """A new source port for each of `phones`."""
        for start in range(0, len(phones), OPEN_BATCH):
            await asyncio.gather(*(phone.open() for phone in phones[start : start + OPEN_BATCH]))

    @staticmethod
    async def round(phones: Sequence[Phone], rate_per_s: float, *, transactions_each: int) -> RoundTally:
        """Each of `phones` registers once, started `transactions_each`/rate apart (2 for a full
        registration, 1 for a cached refresh); returns when every phone's transaction ended."""
        tally = RoundTally(phones=len(phones))
        pacer = Pacer(rate_per_s)
        in_flight = asyncio.Semaphore(MAX_IN_FLIGHT)

        async def one(phone: Phone) -> None:
            try:
                await phone.register(tally)
            finally:
                in_flight.release()

        started = time.perf_counter()
        async with asyncio.TaskGroup() as group:
            for phone in phones:
                await pacer.take(transactions_each)
                await in_flight.acquire()
                group.create_task(one(phone))
        tally.elapsed_s = time.perf_counter() - started
        return tally


def _allow_descriptors(needed: int) -> None:
    """Raises the soft limit of open files to `needed` when it is lower (up to the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        ceiling = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (ceiling, hard))
        if ceiling < needed:
            raise RuntimeError(f"{needed} open files needed for the phones' sockets, the hard limit is {hard}")
