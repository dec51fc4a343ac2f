"""Phones for the multi-SBC tests: UDP user agents that register, refresh, and fail over to another SBC.

Each phone has one socket at a time (bound to the address it reaches its SBC from), keeps its Call-ID and counts
its CSeq up like a phone, retransmits a request as RFC 3261 17.1.2.2 says (T1 doubling), and answers a 401 with
an RFC 2617 digest (written here, independent of the service's own). Unlike a phone's Timer F (32 s), a
transaction gives up after `give_up_s`: the phone then fails over to its next SBC (a new socket and Call-ID),
as a phone with a backup registrar does. Every final answer is noted with the SBC it came from.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import re
import secrets
from collections import Counter
from dataclasses import dataclass, field
from typing import cast

T1_S, T2_S = 0.5, 4.0
_CHALLENGE_PARAM = re.compile(r'(\w+)="?([^",]*)"?')


@dataclass(frozen=True)
class SbcRoute:
    """How phones reach one SBC: its ingest id, where it listens, and the local address phones send from."""

    name: str
    host: str
    port: int
    phone_ip: str


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]  # lower-case names; the last of repeated headers

    @classmethod
    def parse(cls, data: bytes) -> Answer | None:
        head = data.split(b"\r\n\r\n", 1)[0].decode(errors="replace").split("\r\n")
        parts = head[0].split(" ", 2)
        if len(parts) < 2 or parts[0] != "SIP/2.0" or not parts[1].isdigit():
            return None
        headers = {name.strip().lower(): value.strip() for name, _, value in (line.partition(":") for line in head[1:])}
        return cls(int(parts[1]), headers)


def digest_authorization(challenge: str, user: str, password: str, uri: str) -> str:
    """RFC 2617 credentials for a `WWW-Authenticate: Digest ...` challenge (qop=auth when offered)."""
    params = dict(_CHALLENGE_PARAM.findall(challenge.removeprefix("Digest ")))
    realm, nonce = params["realm"], params["nonce"]
    ha1 = hashlib.md5(f"{user}:{realm}:{password}".encode()).hexdigest()
    ha2 = hashlib.md5(f"REGISTER:{uri}".encode()).hexdigest()
    value = f'Digest username="{user}", realm="{realm}", nonce="{nonce}", uri="{uri}", algorithm=MD5'
    if "auth" in params.get("qop", "").split(","):
        cnonce, nc = secrets.token_hex(4), "00000001"
        response = hashlib.md5(f"{ha1}:{nonce}:{nc}:{cnonce}:auth:{ha2}".encode()).hexdigest()
        value += f', response="{response}", qop=auth, nc={nc}, cnonce="{cnonce}"'
    else:
        value += f', response="{hashlib.md5(f"{ha1}:{nonce}:{ha2}".encode()).hexdigest()}"'
    if "opaque" in params:
        value += f', opaque="{params["opaque"]}"'
    return value


class _Socket(asyncio.DatagramProtocol):
    """One phone socket: the final answer to the transaction in flight, matched by Call-ID and CSeq."""

    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.waiting: tuple[str, str, asyncio.Future[Answer]] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        answer = Answer.parse(data)
        if answer is None or answer.status < 200 or self.waiting is None:
            return
        call_id, cseq, future = self.waiting
        if answer.headers.get("call-id") == call_id and answer.headers.get("cseq") == cseq and not future.done():
            future.set_result(answer)


@dataclass(frozen=True)
class Granted:
    """A 200 OK the phone received: through which SBC, and from which source of the phone."""

    sbc: str
    source: tuple[str, int]


@dataclass
class Phone:
    """One user registering through the first of `routes`, refreshing every `refresh_s`, failing over in turn."""

    user: str
    password: str
    realm: str
    routes: list[SbcRoute]
    expires_s: int
    give_up_s: float
    answers: Counter[str] = field(default_factory=Counter)  # "<sbc> <status>" or "<sbc> timeout"
    granted: list[Granted] = field(default_factory=list)
    route_log: list[str] = field(default_factory=list)  # the SBCs it used, in order
    _route: int = 0
    _socket: _Socket | None = None
    _call_id: str = ""
    _tag: str = ""
    _cseq: int = 0
    _move_to: int | None = None

    @property
    def aor(self) -> str:
        return f"{self.user}@{self.realm}"

    @property
    def sbc(self) -> SbcRoute:
        return self.routes[self._route]

    @property
    def source(self) -> tuple[str, int]:
        assert self._socket is not None and self._socket.transport is not None
        host, port = self._socket.transport.get_extra_info("sockname")[:2]
        return str(host), int(port)

    def move_to(self, sbc_name: str) -> None:
        """Registers through that SBC from the next registration on (a re-homed phone)."""
        self._move_to = next(i for i, route in enumerate(self.routes) if route.name == sbc_name)

    async def run(self, stop: asyncio.Event, refresh_s: tuple[float, float], retry_s: float) -> None:
        """Registers, then again every `refresh_s` (after a failure, `retry_s`), until `stop`: it ends when the
        registration in progress does."""
        await self._open(self._route)
        try:
            while not stop.is_set():
                if self._move_to is not None:
                    await self._open(self._move_to)
                    self._move_to = None
                status = await self.register()
                if status is None:  # no answer: the SBC is gone, try the next one
                    await self._open((self._route + 1) % len(self.routes))
                    continue
                pause_s = random.uniform(*refresh_s) if status == 200 else retry_s
                try:
                    async with asyncio.timeout(pause_s):
                        await stop.wait()
                except TimeoutError:
                    pass
        finally:
            self.close()

    def close(self) -> None:
        if self._socket is not None and self._socket.transport is not None:
            self._socket.transport.close()
        self._socket = None

    async def _open(self, route: int) -> None:
        """A new socket bound to the address the route is reached from, and a new Call-ID."""
        self.close()
        self._route = route
        loop = asyncio.get_running_loop()
        _, self._socket = await loop.create_datagram_endpoint(_Socket, local_addr=(self.sbc.phone_ip, 0))
        self._call_id, self._tag, self._cseq = secrets.token_hex(10), secrets.token_hex(4), 0
        self.route_log.append(self.sbc.name)

    async def register(self) -> int | None:
        """One registration: REGISTER and, when challenged, the REGISTER with the digest. Its final status,
        None when a transaction got no final answer."""
        answer = await self._transaction(None)
        if answer is not None and answer.status == 401 and "www-authenticate" in answer.headers:
            uri = f"sip:{self.realm}"
            credentials = digest_authorization(answer.headers["www-authenticate"], self.user, self.password, uri)
            answer = await self._transaction(credentials)
        if answer is None:
            return None
        if answer.status == 200:
            self.granted.append(Granted(self.sbc.name, self.source))
        return answer.status

    async def _transaction(self, authorization: str | None) -> Answer | None:
        assert self._socket is not None and self._socket.transport is not None
        self._cseq += 1
        cseq = f"{self._cseq} REGISTER"
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Answer] = loop.create_future()
        self._socket.waiting = (self._call_id, cseq, future)
        message = self._message(cseq, authorization)
        give_up, interval = loop.time() + self.give_up_s, T1_S
        try:
            while (left := give_up - loop.time()) > 0:
                self._socket.transport.sendto(message, (self.sbc.host, self.sbc.port))
                done, _ = await asyncio.wait((future,), timeout=min(interval, left))
                if done:
                    answer = future.result()
                    self.answers[f"{self.sbc.name} {answer.status}"] += 1
                    return answer
                interval = min(2 * interval, T2_S)
            self.answers[f"{self.sbc.name} timeout"] += 1
            return None
        finally:
            self._socket.waiting = None

    def _message(self, cseq: str, authorization: str | None) -> bytes:
        host, port = self.source
        lines = [
            f"REGISTER sip:{self.realm} SIP/2.0",
            f"Via: SIP/2.0/UDP {host}:{port};branch=z9hG4bK{secrets.token_hex(8)};rport",
            "Max-Forwards: 70",
            f"From: <sip:{self.aor}>;tag={self._tag}",
            f"To: <sip:{self.aor}>",
            f"Call-ID: {self._call_id}",
            f"CSeq: {cseq}",
            f"Contact: <sip:{self.user}@{host}:{port};transport=udp>;expires={self.expires_s}",
            f"Expires: {self.expires_s}",
            *([f"Authorization: {authorization}"] if authorization else []),
            "User-Agent: two-sbcs-phone",
            "Content-Length: 0",
        ]
        return ("\r\n".join(lines) + "\r\n\r\n").encode()
