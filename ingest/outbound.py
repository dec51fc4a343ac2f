"""The SIP edge's half of outbound registration: it sends the REGISTERs the regbot commands.

A ConcurrentHandler over the `commands` stream. Every ingest reads all commands with a group of its own
(`edge:<ingest_id>`) and sends those addressed to it: the regbot addresses its own process's edge, so a
carrier sees every REGISTER of the cluster leave from the leader's SBC (its Via, Contact and source), not from
whichever SBC happened to read the command.

For each `OutboundRegisterRequested` it sends the REGISTER through the front as a client transaction, answers
a 401/407 once with an MD5 digest (qop=auth with nc and cnonce when offered, opaque echoed; same Call-ID and
From tag, CSeq + 1; sent to the challenger's address when the next hop is a hostname, DRACHTIO.md 7.1), and
commits `OutboundRegisterAnswered` on `carriers` with the ack, naming the address that answered and those
located before it that gave no answer (the native front tries them in turn, RFC 3263 4.3). Each of the two
transactions has Timer F (32 s), shared by the addresses it is tried at, and no more than is left of the
regbot's deadline for the attempt: the regbot acts on no answer after it (it sends the REGISTER again), so
a REGISTER that would go out after it is not sent. The carrier password arrives sealed
(runtime/sealed.py) and is opened only here, in memory. The gateway OPTIONS pings on the same stream are sent
by `ingest/pings.py`.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import logging
import os
from collections.abc import Sequence

from events import (
    Event,
    GatewayPingRequested,
    OutboundRegisterAnswered,
    OutboundRegisterRequested,
    StreamNames,
    now_ms,
    stamp,
)
from ingest.fronts.front import ClientAnswer, OutboundRequest, SipFront
from ingest.locator import SipLocator
from ingest.sip import SipParseError, SipResponse
from ingest.sip.digest import parse_digest_params
from ingest.sip.headers import parse_contacts, parse_delta_seconds
from ingest.sip.uri import parse_uri
from runtime.handling import Delivery, Outcome, Step
from runtime.sealed import Sealer

log = logging.getLogger(__name__)

EDGE_HOST = "localhost"  # the Contact host the edge replaces with its own address (processors/regbot/targets.py)
TRANSACTION_TIMEOUT_S = 32.0  # Timer F: one transaction, shared by the located addresses it is tried at


class AttemptExpired(Exception):
    """The regbot's deadline for an attempt passed before one of its REGISTERs could be sent."""


def md5_hex(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


def digest_authorization(
    challenge: str, *, method: str, uri: str, username: str, password: str, cnonce: str, nc: int = 1
) -> str:
    """The Authorization (or Proxy-Authorization) value answering one Digest challenge (RFC 2617, MD5)."""
    params = parse_digest_params(challenge)
    realm = params.get("realm", "")
    nonce = params.get("nonce", "")
    offered = [q.strip().lower() for q in params.get("qop", "").split(",") if q.strip()]
    ha1 = md5_hex(f"{username}:{realm}:{password}")
    ha2 = md5_hex(f"{method}:{uri}")
    parts = [f'username="{username}"', f'realm="{realm}"', f'nonce="{nonce}"', f'uri="{uri}"']
    if "auth" in offered:
        count = f"{nc:08x}"
        response = md5_hex(f"{ha1}:{nonce}:{count}:{cnonce}:auth:{ha2}")
        parts += [f'response="{response}"', "algorithm=MD5", "qop=auth", f"nc={count}", f'cnonce="{cnonce}"']
    else:
        response = md5_hex(f"{ha1}:{nonce}:{ha2}")
        parts += [f'response="{response}"', "algorithm=MD5"]
    if "opaque" in params:
        parts.append(f'opaque="{params["opaque"]}"')
    return "Digest " + ",".join(parts)


def edge_hostport(sbc_address: str, transport: str) -> str | None:
    """This edge's `host:port` for a transport, from drachtio's hostport list (`udp/1.2.3.4:5060,tcp/...`).

    SPEC 4.3: the transport's own address, else (TLS) the UDP host with port 5061, else the UDP address.
    """
    addresses: dict[str, str] = {}
    for item in sbc_address.split(","):
        name, _, hostport = item.strip().partition("/")
        if hostport and name.lower() not in addresses:
            addresses[name.lower()] = hostport
    if transport in addresses:
        return addresses[transport]
    udp = addresses.get("udp")
    if udp is None:
        return next(iter(addresses.values()), None)
    if transport == "tls":
        return f"{udp.rsplit(':', 1)[0]}:5061"
    return udp


def granted_in(response: SipResponse) -> tuple[int | None, int | None]:
    """(Expires header, the first Contact's expires parameter) of a 200, each None when absent or bad."""
    expires_header = None
    value = response.headers.get("expires")
    if value is not None:
        try:
            expires_header = parse_delta_seconds(value)
        except SipParseError:
            expires_header = None
    contact_expires = None
    try:
        contacts = parse_contacts(response.headers.get_all("contact"))
    except SipParseError:
        contacts = []
    if contacts and contacts != "*":
        raw = contacts[0].params.get("expires")  # type: ignore[union-attr]
        if raw is not None:
            try:
                contact_expires = parse_delta_seconds(raw.strip('"'))
            except SipParseError:
                contact_expires = None
    return expires_header, contact_expires


def retry_hop(next_hop: str | None, request_uri: str, challenge: ClientAnswer) -> str | None:
    """The next hop of the digest retry (DRACHTIO.md 7.1, as drachtio-srf does).

    When the next hop (else the Request-URI) names a hostname, the retry goes to the address the
    challenge came from, `sip:<addr>:<port>[;transport=<t>]` (no transport parameter for UDP), so
    that DNS cannot send it to another A record than the one holding the nonce. An IP next hop, or
    a challenge whose source the front does not know, leaves the next hop as it was.
    """
    if challenge.source is None:
        return next_hop
    try:
        host = parse_uri(next_hop or request_uri).host.strip("[]")
    except SipParseError:
        return next_hop
    try:
        ipaddress.ip_address(host)
    except ValueError:
        transport, address, port = challenge.source
        hop = f"sip:[{address}]:{port}" if ":" in address else f"sip:{address}:{port}"
        return hop if transport.lower() == "udp" else f"{hop};transport={transport.lower()}"
    return next_hop


class OutboundRegistrations:
    """A ConcurrentHandler over `commands`: sends each commanded REGISTER, reports its final answer."""

    def __init__(
        self, front: SipFront, names: StreamNames, sealer: Sealer, edge_id: str, locator: SipLocator | None = None
    ) -> None:
        self.edge_id = edge_id
        self.front = front
        self.locator = locator or SipLocator()
        self.names = names
        self.sealer = sealer
        self.sent = 0
        self.challenged = 0
        self.failed = 0
        from ingest.pings import GatewayPings  # the gateway OPTIONS pings come on the same stream

        self.pings = GatewayPings(front, names, edge_id)

    def metrics(self) -> dict[str, float]:
        return {
            "registers_sent": self.sent,
            "registers_challenged": self.challenged,
            "send_failures": self.failed,
            **self.pings.metrics(),
        }

    def order_key(self, event: Event) -> str | None:
        return getattr(event, "sip_gateway_sid", None)

    async def begin(self, deliveries: Sequence[Delivery]) -> list[Step]:
        steps: list[Step] = []
        for delivery in deliveries:
            event = delivery.event
            if isinstance(event, GatewayPingRequested):
                steps.append(self.pings.step(event, delivery.entry_id))
            elif not isinstance(event, OutboundRegisterRequested) or event.edge_id not in ("", self.edge_id):
                steps.append(Outcome())  # another SBC's command: its own edge sends it
            elif event.deadline_ms and now_ms() > event.deadline_ms:
                steps.append(Outcome())  # the regbot has given up on this attempt and sends a new one
            else:
                steps.append(self._register(event, delivery.entry_id))
        return steps

    async def _register(self, command: OutboundRegisterRequested, causation_id: str) -> Outcome:
        try:
            await self._front_ready()
            answer = await self._exchange(command, causation_id)
        except AttemptExpired:
            log.info(
                "outbound REGISTER not sent, past the attempt's deadline carrier=%s gateway=%s",
                command.voip_carrier_sid,
                command.sip_gateway_sid,
            )
            return Outcome()  # as for a command read too late: the regbot sends a new attempt
        except Exception as exc:  # noqa: BLE001 - any failure to send is an answer (SPEC 4.4 "exception while sending")
            self.failed += 1
            log.warning(
                "outbound REGISTER not sent carrier=%s gateway=%s error=%s",
                command.voip_carrier_sid,
                command.sip_gateway_sid,
                exc,
            )
            answer = self._answer(command, causation_id, 0, f"send failed: {exc}", command.cseq)
        return Outcome(appends=[(self.names.carriers, answer)])

    def _answer(
        self,
        command: OutboundRegisterRequested,
        causation_id: str,
        status: int,
        reason: str,
        last_cseq: int,
        **more: object,
    ) -> OutboundRegisterAnswered:
        return OutboundRegisterAnswered(
            **stamp(command.correlation_id, causation_id),
            attempt_id=command.attempt_id,
            voip_carrier_sid=command.voip_carrier_sid,
            sip_gateway_sid=command.sip_gateway_sid,
            status=status,
            reason=reason,
            call_id=command.call_id,
            first_cseq=command.cseq,
            last_cseq=last_cseq,
            **more,  # type: ignore[arg-type]
        )

    def _request(
        self,
        command: OutboundRegisterRequested,
        tag: str,
        cseq: int,
        auth: tuple[str, str] | None,
        next_hop: str | None,
    ) -> OutboundRequest:
        contact = command.contact
        if f"@{EDGE_HOST};" in contact or f"@{EDGE_HOST}>" in contact:
            hostport = edge_hostport(self.front.sbc_address, command.transport)
            if hostport:
                contact = contact.replace(f"@{EDGE_HOST}", f"@{hostport}", 1)
        headers = [
            ("From", f"<{command.from_uri}>;tag={tag}"),
            ("To", f"<{command.from_uri}>"),
            ("Call-ID", command.call_id),
            ("CSeq", f"{cseq} REGISTER"),
            ("Contact", contact),
            ("Expires", str(command.expires_s)),
            ("User-Agent", command.user_agent),
        ]
        if auth is not None:
            headers.append(auth)
        return OutboundRequest("REGISTER", command.request_uri, headers, next_hop=next_hop)

    async def _front_ready(self, timeout_s: float = 10.0) -> None:
        """At start the consumer may read a command before the front listens (or drachtio is connected)."""
        deadline = asyncio.get_running_loop().time() + timeout_s
        while not self.front.ready:
            if asyncio.get_running_loop().time() > deadline:
                raise ConnectionError("the SIP front is not ready")
            await asyncio.sleep(0.05)

    def _timeout_s(self, command: OutboundRegisterRequested) -> float:
        """One transaction's time: Timer F, cut to what is left of the attempt (the regbot acts on no answer
        after its deadline and sends the REGISTER again). Raises `AttemptExpired` when nothing is left."""
        if not command.deadline_ms:
            return TRANSACTION_TIMEOUT_S
        left_s = (command.deadline_ms - now_ms()) / 1000
        if left_s <= 0:
            raise AttemptExpired
        return min(TRANSACTION_TIMEOUT_S, left_s)

    async def _exchange(self, command: OutboundRegisterRequested, causation_id: str) -> OutboundRegisterAnswered:
        tag = os.urandom(5).hex()
        cseq = command.cseq
        self.sent += 1
        first = self._request(command, tag, cseq, None, command.next_hop)
        answer = await self.front.exchange(first, self._timeout_s(command))
        unanswered = answer.unanswered
        response = answer.response
        authenticated = False
        if response.status in (401, 407):
            challenge_name, answer_name = (
                ("www-authenticate", "Authorization")
                if response.status == 401
                else ("proxy-authenticate", "Proxy-Authorization")
            )
            challenge = response.headers.get(challenge_name)
            if challenge is not None:
                self.challenged += 1
                password = self.sealer.open(command.password_sealed)
                try:
                    value = digest_authorization(
                        challenge,
                        method="REGISTER",
                        uri=command.request_uri,
                        username=command.username,
                        password=password,
                        cnonce=os.urandom(4).hex(),
                    )
                except SipParseError as exc:
                    raise ValueError(f"unreadable {challenge_name}: {exc}") from exc
                del password
                cseq += 1
                self.sent += 1
                hop = retry_hop(command.next_hop, command.request_uri, answer)
                request = self._request(command, tag, cseq, (answer_name, value), hop)
                answer = await self.front.exchange(request, self._timeout_s(command))
                unanswered += answer.unanswered
                response = answer.response
                authenticated = True
        expires_header, contact_expires = granted_in(response) if response.status == 200 else (None, None)
        addresses: tuple[str, ...] = ()
        if command.resolve_addresses:
            # SPEC 4.4: the literal, else A records (a port given) or SRV by the gateway's transport, then A.
            addresses = await self.locator.addresses(command.gateway_host, command.gateway_port, command.transport)
        source = f"{answer.source[1]}:{answer.source[2]}" if answer.source is not None else None
        not_answering = tuple(f"{address}:{port}" for _, address, port in unanswered)
        log.info(
            "outbound REGISTER answered carrier=%s gateway=%s status=%d cseq=%d from=%s unanswered=%s",
            command.voip_carrier_sid,
            command.sip_gateway_sid,
            response.status,
            cseq,
            source or "-",
            ",".join(not_answering) or "-",
        )
        return self._answer(
            command,
            causation_id,
            response.status,
            f"{response.status} {response.reason}",
            cseq,
            expires_header=expires_header,
            contact_expires=contact_expires,
            authenticated=authenticated,
            source=source,
            unanswered=not_answering,
            addresses=addresses,
        )
