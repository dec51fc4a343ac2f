"""A real DNS server over UDP for tests: answers from a table of records, NXDOMAIN for names it does not know.

Queries are parsed and answers built with dnspython's `dns.message`; the server logs every question it gets,
so a test can tell which lookups (SRV, A) the service made.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager

import dns.flags
import dns.message
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

Records = Mapping[tuple[str, str], Sequence[str]]  # (name, type) → rdata texts, e.g. ("gw.test", "A"): ["127.0.0.1"]


class DnsServer(asyncio.DatagramProtocol):
    """Answers each query from `records`: the rdatas of its (name, type), NOERROR with no answer when the name
    has records of other types only, NXDOMAIN when it has none (names are matched without the final dot)."""

    def __init__(self, records: Records, ttl: int = 60) -> None:
        self.records = {
            (name.rstrip(".").lower(), kind.upper()): list(rdatas) for (name, kind), rdatas in records.items()
        }
        self.ttl = ttl
        self.questions: list[tuple[str, str]] = []
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        query = dns.message.from_wire(data)
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        for question in query.question:
            name = question.name.to_text(omit_final_dot=True).lower()
            kind = dns.rdatatype.to_text(question.rdtype)
            self.questions.append((name, kind))
            rdatas = self.records.get((name, kind))
            if rdatas:
                rrset = dns.rrset.from_text_list(question.name, self.ttl, dns.rdataclass.IN, question.rdtype, rdatas)
                response.answer.append(rrset)
            elif not any(known == name for known, _ in self.records):
                response.set_rcode(dns.rcode.NXDOMAIN)
        assert self.transport is not None
        self.transport.sendto(response.to_wire(), addr)

    def asked(self, kind: str) -> list[str]:
        """The names asked for with records of one type, in order."""
        return [name for name, asked_kind in self.questions if asked_kind == kind]


@asynccontextmanager
async def dns_server(records: Records) -> AsyncIterator[tuple[DnsServer, int]]:
    """A `DnsServer` on 127.0.0.1 at a free UDP port: (server, port)."""
    transport, server = await asyncio.get_running_loop().create_datagram_endpoint(
        lambda: DnsServer(records), local_addr=("127.0.0.1", 0)
    )
    try:
        yield server, transport.get_extra_info("sockname")[1]
    finally:
        transport.close()
