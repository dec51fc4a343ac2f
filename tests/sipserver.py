"""A carrier's SIP server over TCP or TLS for tests, in Python: sipp cannot be one over TLS here (Debian's
sip-tester is built without OpenSSL: "To use a TLS transport you must compile SIPp with OpenSSL").

It reads requests with its own framing (head to the blank line, then Content-Length bytes) and answers
REGISTER as a registrar with digest authentication does: 401 with a challenge (qop=auth, opaque) to a REGISTER
without credentials, 200 with `Expires` to one whose digest response it computes itself from the password, 403
to a wrong one; OPTIONS with 200. Every request is kept with its arrival time, the connection it came on and
the TLS server name the client sent (SNI), and every message both ways is logged as a transcript.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import ssl
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field


def md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


@dataclass
class Received:
    at: float  # time.monotonic()
    connection: int  # 1, 2, ... in the order connections were accepted
    server_name: str | None  # SNI of that connection (TLS), None without
    text: str

    @property
    def method(self) -> str:
        return self.text.split(" ", 1)[0]

    def header(self, name: str) -> str | None:
        match = re.search(rf"^{name}:[ \t]*(.*?)\r?$", self.text, re.IGNORECASE | re.MULTILINE)
        return match.group(1) if match else None


def digest_params(value: str) -> dict[str, str]:
    return {k.lower(): v1 or v2 for k, v1, v2 in re.findall(r'(\w+)=(?:"([^"]*)"|([^\s,]+))', value)}


@dataclass
class CarrierServer:
    """The state of one running server (see `carrier_server`)."""

    realm: str
    username: str
    password: str
    grant_s: int
    received: list[Received] = field(default_factory=list)
    transcript: list[str] = field(default_factory=list)
    server_names: list[str | None] = field(default_factory=list)  # per connection
    port: int = 0
    sni: dict[int, str | None] = field(default_factory=dict)  # id(SSLObject) → the name it was sent

    def registers(self) -> list[Received]:
        return [r for r in self.received if r.method == "REGISTER"]

    def answer(self, request: Received) -> str:
        echoed = [f"{name}: {request.header(name)}" for name in ("Via", "From", "To", "Call-ID", "CSeq")]
        if request.method != "REGISTER":
            return "\r\n".join(["SIP/2.0 200 OK", *echoed, "Content-Length: 0", "", ""])
        credentials = request.header("Authorization")
        if credentials is None:
            nonce = f"n{len(self.received)}"
            challenge = f'Digest realm="{self.realm}", nonce="{nonce}", algorithm=MD5, qop="auth", opaque="0paque"'
            return "\r\n".join(
                ["SIP/2.0 401 Unauthorized", *echoed, f"WWW-Authenticate: {challenge}", "Content-Length: 0", "", ""]
            )
        p = digest_params(credentials.removeprefix("Digest "))
        ha1 = md5(f"{self.username}:{self.realm}:{self.password}")
        ha2 = md5(f"REGISTER:{p.get('uri', '')}")
        expected = md5(f"{ha1}:{p.get('nonce')}:{p.get('nc')}:{p.get('cnonce')}:auth:{ha2}")
        if p.get("response") != expected or p.get("username") != self.username:
            return "\r\n".join(["SIP/2.0 403 Forbidden", *echoed, "Content-Length: 0", "", ""])
        return "\r\n".join(["SIP/2.0 200 OK", *echoed, f"Expires: {self.grant_s}", "Content-Length: 0", "", ""])

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        ssl_object = writer.get_extra_info("ssl_object")
        self.server_names.append(self.sni.get(id(ssl_object)) if ssl_object is not None else None)
        connection = len(self.server_names)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                if not head.strip():
                    continue  # keep-alive CRLFs
                length = re.search(rb"^(?:Content-Length|l):[ \t]*(\d+)", head, re.IGNORECASE | re.MULTILINE)
                body = await reader.readexactly(int(length.group(1))) if length else b""
                request = Received(time.monotonic(), connection, self.server_names[-1], (head + body).decode())
                self.received.append(request)
                self.transcript.append(f"--- received on connection {connection}\n{request.text}")
                response = self.answer(request)
                self.transcript.append(f"--- sent on connection {connection}\n{response}")
                writer.write(response.encode())
                await writer.drain()
        finally:
            writer.close()


@asynccontextmanager
async def carrier_server(
    *,
    realm: str,
    username: str,
    password: str,
    grant_s: int = 3600,
    tls: tuple[str, str] | None = None,
    port: int = 0,
) -> AsyncIterator[CarrierServer]:
    """A `CarrierServer` on 127.0.0.1 (a free port unless given), over TLS with (cert, key), else TCP."""
    server = CarrierServer(realm, username, password, grant_s)
    context = None
    if tls is not None:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(*tls)
        context.sni_callback = lambda ssl_object, name, _: server.sni.__setitem__(id(ssl_object), name)  # type: ignore[assignment,misc]
    listener = await asyncio.start_server(server.serve, "127.0.0.1", port, ssl=context)
    server.port = listener.sockets[0].getsockname()[1]
    try:
        yield server
    finally:
        listener.close()
        await listener.wait_closed()
