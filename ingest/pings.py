"""The SIP edge's half of the gateway OPTIONS ping (SPEC 4.6): it sends the pings its own process commands.

`OutboundRegistrations` (ingest/outbound.py), the edge's handler of the `commands` stream, hands every
`GatewayPingRequested` here. A ping addressed to another SBC is that SBC's to send (each SBC pings from its own
address); one past its deadline is dropped (the next round sends another). The OPTIONS is a client transaction
of the front (native: Timer E/F, and the next located address when one gives no answer, all within the
command's timeout; drachtio: its own); the final answer, a 408 when none came within the command's timeout, or
the failure to send, becomes `GatewayPingAnswered` on `carriers`, committed with the ack.
"""

from __future__ import annotations

import logging
import os

from events import GatewayPingAnswered, GatewayPingRequested, StreamNames, now_ms, stamp
from ingest.fronts.front import OutboundRequest, SipFront
from ingest.outbound import edge_hostport
from runtime.handling import Outcome, Step

log = logging.getLogger(__name__)


class GatewayPings:
    """Sends the commanded OPTIONS pings of one edge and reports their answers."""

    def __init__(self, front: SipFront, names: StreamNames, edge_id: str) -> None:
        self.front = front
        self.names = names
        self.edge_id = edge_id
        self.sent = 0
        self.failed = 0

    def metrics(self) -> dict[str, float]:
        return {"pings_sent": self.sent, "ping_send_failures": self.failed}

    def step(self, command: GatewayPingRequested, causation_id: str) -> Step:
        if command.edge_id not in ("", self.edge_id):
            return Outcome()  # another SBC's ping: it sends it from its own address
        if command.deadline_ms and now_ms() > command.deadline_ms:
            return Outcome()  # stale (the edge was away): the pinger's next round has sent a newer one
        return self._ping(command, causation_id)

    def _request(self, command: GatewayPingRequested) -> OutboundRequest:
        transport = command.next_hop.rsplit("transport=", 1)[-1].lower() if "transport=" in command.next_hop else "udp"
        own = edge_hostport(self.front.sbc_address, transport) or "localhost"
        headers = [
            ("From", f"<sip:{own}>;tag={os.urandom(5).hex()}"),
            ("To", f"<{command.request_uri}>"),
            ("Call-ID", os.urandom(12).hex()),
            ("CSeq", "1 OPTIONS"),
        ]
        return OutboundRequest("OPTIONS", command.request_uri, headers, next_hop=command.next_hop)

    async def _ping(self, command: GatewayPingRequested, causation_id: str) -> Outcome:
        status, reason, error = 0, "", None
        try:
            if not self.front.ready:
                raise ConnectionError("the SIP front is not ready")
            self.sent += 1
            exchanged = await self.front.exchange(self._request(command), command.timeout_ms / 1000)
            response, source = exchanged.response, exchanged.source
            status, reason = response.status, f"{response.status} {response.reason}"
            if exchanged.unanswered:
                log.info(
                    "gateway OPTIONS answered after addresses that did not gateway=%s status=%d from=%s unanswered=%s",
                    command.gateway.sip_gateway_sid,
                    status,
                    f"{source[1]}:{source[2]}" if source is not None else "-",
                    ",".join(f"{address}:{port}" for _, address, port in exchanged.unanswered),
                )
        except Exception as exc:  # noqa: BLE001 - any failure to send is an answer (SPEC 4.6 "exception while sending")
            self.failed += 1
            error = str(exc) or type(exc).__name__
            log.warning(
                "gateway OPTIONS not sent gateway=%s target=%s error=%s",
                command.gateway.sip_gateway_sid,
                command.next_hop,
                error,
            )
        answer = GatewayPingAnswered(
            **stamp(command.correlation_id, causation_id),
            gateway=command.gateway,
            edge_id=self.edge_id,
            status=status,
            reason=reason,
            error=error,
        )
        return Outcome(appends=[(self.names.carriers, answer)])
