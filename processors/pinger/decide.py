"""The pinger's decisions, pure: which gateways to ping and how (SPEC 4.6), and what an answer means.

One cluster-wide key per gateway (`blacklist-sip-gateway:<sid>`) and one answer per SBC per round: the key is
set when a failure finds no SBC that reaches the gateway (each SBC's latest answer, if recent enough, is a
failure) and it is not already set; it is deleted on any SBC's 200. So a gateway that one SBC cannot reach but
another can is not taken away from the whole cluster, and with one SBC this is the original's behaviour.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from events import (
    Event,
    GatewayPingAnswered,
    GatewayPingDisabled,
    GatewayPingFailed,
    GatewayPingRequested,
    GatewayPingSucceeded,
    PingedGateway,
    stamp,
)
from processors.regbot.targets import transport_of

TIMER_F_MS = 32_000


@dataclass(frozen=True, slots=True)
class PingPolicy:
    interval_s: int = 60  # SEND_OPTIONS_PING_INTERVAL
    blacklist_ttl_s: int = 300  # OPTIONS_PING_TTL
    remove_codes: frozenset[int] = frozenset()  # OPTIONS_RESPONSE_REMOVE

    @property
    def timeout_ms(self) -> int:
        """A ping is over before the next round starts: Timer F, or the interval when shorter."""
        return min(TIMER_F_MS, self.interval_s * 1000)

    @property
    def fresh_ms(self) -> int:
        """How long an SBC's answer counts for the others: two rounds and a timeout (a stopped SBC drops out)."""
        return 2 * self.interval_s * 1000 + self.timeout_ms


@dataclass(frozen=True, slots=True)
class PingTarget:
    gateway: PingedGateway
    request_uri: str
    next_hop: str


def _text(row: Mapping[str, object], name: str) -> str | None:
    value = row.get(name)
    return None if value is None or value == "" else str(value)


def target_of(row: Mapping[str, object]) -> PingTarget:
    """SPEC 4.6 from a `sip_gateways` row joined with its carrier's name, account and service provider.

    Request-URI `sip:<ipv4>[:<port>]`, or `sips:<ipv4>` (no port) for tls with use_sips_scheme; next hop
    `sip:<ipv4>[:<port>];transport=<protocol before '/'>`. (The original added the port only to what a loose
    pattern took for an IP, and wrote `:null` for a missing port; here the port whenever one is set, so a
    hostname with a port is pinged at that port (A records) and one without through its SRV records.)
    """
    port_value = row.get("port")
    port = int(str(port_value)) if port_value not in (None, "", 0) else None
    protocol = _text(row, "protocol") or "udp"
    ipv4 = str(row["ipv4"])
    gateway = PingedGateway(
        sip_gateway_sid=str(row["sip_gateway_sid"]),
        voip_carrier_sid=str(row["voip_carrier_sid"]),
        ipv4=ipv4,
        port=port,
        protocol=protocol,
        carrier_found=row.get("carrier_sid") is not None,
        carrier_name=_text(row, "carrier_name") or "",
        account_sid=_text(row, "account_sid"),
        service_provider_sid=_text(row, "service_provider_sid"),
    )
    sips = "tls" in protocol.lower() and bool(row.get("use_sips_scheme"))
    request_uri = f"sips:{ipv4}" if sips else f"sip:{ipv4}{f':{port}' if port else ''}"
    hop_port = f":{port}" if port else ""  # as the regbot's next hop: a port given is used, hostname or not
    next_hop = f"sip:{ipv4}{hop_port};transport={transport_of(protocol)}"
    return PingTarget(gateway, request_uri, next_hop)


def plan_pings(
    rows: Sequence[Mapping[str, object]], policy: PingPolicy, now_ms: int, edge_id: str
) -> list[GatewayPingRequested]:
    """One command per gateway to ping this round, addressed to this process's edge."""
    commands = []
    for row in rows:
        target = target_of(row)
        commands.append(
            GatewayPingRequested(
                **stamp(),
                gateway=target.gateway,
                request_uri=target.request_uri,
                next_hop=target.next_hop,
                timeout_ms=policy.timeout_ms,
                deadline_ms=now_ms + policy.interval_s * 1000,
                edge_id=edge_id,
            )
        )
    return commands


@dataclass(frozen=True, slots=True)
class PeerAnswer:
    """The latest answer one SBC got from a gateway."""

    status: int
    at_ms: int

    @property
    def ok(self) -> bool:
        return self.status == 200

    def encode(self) -> str:
        return f"{self.status}:{self.at_ms}"

    @classmethod
    def decode(cls, raw: bytes | str) -> PeerAnswer | None:
        text = raw.decode() if isinstance(raw, bytes) else raw
        status, _, at_ms = text.partition(":")
        try:
            return cls(int(status), int(at_ms))
        except ValueError:
            return None


def answer_time_ms(answer: GatewayPingAnswered) -> int:
    return int(answer.occurred_at.timestamp() * 1000)


def reachable_from(answer: GatewayPingAnswered, peers: Mapping[str, PeerAnswer], policy: PingPolicy) -> tuple[str, ...]:
    """The other SBCs whose latest answer from this gateway is a recent 200."""
    at_ms = answer_time_ms(answer)
    return tuple(
        sorted(
            edge
            for edge, peer in peers.items()
            if edge != answer.edge_id and peer.ok and at_ms - peer.at_ms <= policy.fresh_ms
        )
    )


def decide_answer(
    answer: GatewayPingAnswered,
    *,
    blacklisted: bool,
    peers: Mapping[str, PeerAnswer],
    policy: PingPolicy,
    causation_id: str | None = None,
) -> list[Event]:
    """The facts of one SBC's answer, given whether the gateway is blacklisted and the other SBCs' answers."""
    envelope = stamp(answer.correlation_id, causation_id)
    common = {"gateway": answer.gateway, "edge_id": answer.edge_id}
    if answer.status == 200:
        return [GatewayPingSucceeded(**envelope, **common, cleared=blacklisted)]  # type: ignore[arg-type]
    reachable = reachable_from(answer, peers, policy)
    blacklist = not blacklisted and not reachable
    events: list[Event] = [
        GatewayPingFailed(
            **envelope,
            **common,  # type: ignore[arg-type]
            status=answer.status,
            reason=answer.reason,
            error=answer.error,
            blacklisted=blacklist,
            ttl_s=policy.blacklist_ttl_s if blacklist else 0,
            reachable_from=reachable,
        )
    ]
    if answer.status in policy.remove_codes:
        events.append(
            GatewayPingDisabled(
                **stamp(answer.correlation_id, causation_id),
                **common,  # type: ignore[arg-type]
                status=answer.status,
            )
        )
    return events
