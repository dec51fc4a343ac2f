"""The SBC's public addresses in MySQL `sbc_addresses` (SPEC 1.2 steps 3-4, 5.4), kept alive periodically.

What the rest of jambonz reads to know which SBCs are alive. At start, and then every
`SBC_PUBLIC_ADDRESS_KEEP_ALIVE_IN_MILISECOND` (the original did it twice per drachtio connect and never
again, so a long-lived SBC's row aged out of `DEAD_SBC_IN_SECOND` and was deleted by its peers), each
public address is written (`addSbcAddress`: the row of that ipv4 updated, else a new one), then rows not
updated for `DEAD_SBC_IN_SECOND` are deleted (`cleanSbcAddresses`). A change of the addresses (drachtio
reconnected with another `hostport`) is written within a second. Writes go through the write pool when
`JAMBONES_MYSQL_WRITE_*` is set.

The addresses come from the SIP front's hostport string (`transport/ip:port,...`): drachtio's `hostport`,
or the native front's listeners advertised with `SIDECAR_SIP_PUBLIC_ADDRESS`. One record per IP with its
udp, tls and wss ports; RFC 1918 addresses are left out as the original does, and so are loopback,
link-local and unspecified ones (they tell another host nothing).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import uuid
from collections.abc import Callable, Sequence

import aiomysql

from ingest.fronts.drachtio.hostports import SbcAddressRecord, public_address_records

log = logging.getLogger(__name__)

DEFAULT_SIP_PORT = 5060  # the column's default, for an address listed without a udp port
CHANGE_CHECK_S = 1.0
QUERY_TIMEOUT_S = 5.0


def sbc_address_records(hostport: str | None) -> list[SbcAddressRecord]:
    """The records `addSbcAddress` is called with for a hostport string."""
    return [record for record in public_address_records(hostport) if _announceable(record.ipv4)]


def _announceable(host: str) -> bool:
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return True  # a name: the operator's choice
    return not (address.is_loopback or address.is_link_local or address.is_unspecified)


async def add_sbc_address(pool: aiomysql.Pool, record: SbcAddressRecord) -> None:
    """`addSbcAddress`: the row with this ipv4 gets the ports and last_updated=NOW(), else a new row."""
    port = record.port if record.port is not None else DEFAULT_SIP_PORT
    async with asyncio.timeout(QUERY_TIMEOUT_S), pool.acquire() as connection, connection.cursor() as cursor:
        await cursor.execute("SELECT sbc_address_sid FROM sbc_addresses WHERE ipv4 = %s", (record.ipv4,))
        rows = await cursor.fetchall()
        if rows:
            await cursor.execute(
                "UPDATE sbc_addresses SET port = %s, tls_port = %s, wss_port = %s, last_updated = NOW() "
                "WHERE ipv4 = %s",
                (port, record.tls_port, record.wss_port, record.ipv4),
            )
        else:
            await cursor.execute(
                "INSERT INTO sbc_addresses (sbc_address_sid, ipv4, port, tls_port, wss_port, last_updated) "
                "VALUES (%s, %s, %s, %s, %s, NOW())",
                (str(uuid.uuid4()), record.ipv4, port, record.tls_port, record.wss_port),
            )


async def clean_sbc_addresses(pool: aiomysql.Pool, dead_sbc_s: int) -> int:
    """`cleanSbcAddresses`: deletes rows never updated or not updated for `dead_sbc_s`; returns how many."""
    async with asyncio.timeout(QUERY_TIMEOUT_S), pool.acquire() as connection, connection.cursor() as cursor:
        await cursor.execute(
            "DELETE FROM sbc_addresses WHERE last_updated IS NULL "
            "OR last_updated < DATE_SUB(NOW(), INTERVAL %s SECOND)",
            (dead_sbc_s,),
        )
        return int(cursor.rowcount)


class SbcAddressKeeper:
    """A Worker: writes this SBC's public addresses and cleans dead ones, at start and every period."""

    name = "sbc-addresses"

    def __init__(
        self,
        pool: aiomysql.Pool,
        hostport: Callable[[], str],
        *,
        keep_alive_ms: int = 900_000,
        dead_sbc_s: int = 3600,
    ) -> None:
        self.pool = pool
        self.hostport = hostport
        self.period_s = max(keep_alive_ms, 1) / 1000
        self.dead_sbc_s = dead_sbc_s
        self.ready = asyncio.Event()
        self._stop = asyncio.Event()
        self.rounds = 0
        self.cleaned = 0
        if self.period_s >= dead_sbc_s:
            log.warning(
                "SBC_PUBLIC_ADDRESS_KEEP_ALIVE_IN_MILISECOND=%d is not shorter than DEAD_SBC_IN_SECOND=%d: "
                "peers may delete this SBC's rows between two keep-alives",
                keep_alive_ms,
                dead_sbc_s,
            )

    def stop(self) -> None:
        self._stop.set()

    def metrics(self) -> dict[str, float]:
        return {"rounds": self.rounds, "cleaned": self.cleaned}

    async def run(self) -> None:
        self.ready.set()
        loop = asyncio.get_running_loop()
        written: str | None = None
        due = loop.time()
        while not self._stop.is_set():
            current = self.hostport()
            if current and (current != written or loop.time() >= due):
                done = await self.keep_alive(sbc_address_records(current))
                written = current
                due = loop.time() + (self.period_s if done else min(self.period_s, 30.0))  # sooner after a failure
            try:
                async with asyncio.timeout(min(CHANGE_CHECK_S, self.period_s)):
                    await self._stop.wait()
            except TimeoutError:
                pass

    async def keep_alive(self, records: Sequence[SbcAddressRecord]) -> bool:
        """One round: every record written, then the dead rows deleted. False if MySQL failed."""
        try:
            for record in records:
                await add_sbc_address(self.pool, record)
            cleaned = await clean_sbc_addresses(self.pool, self.dead_sbc_s)
        except (aiomysql.Error, OSError, TimeoutError) as exc:
            log.warning("sbc_addresses not updated error=%s", exc)
            return False
        self.rounds += 1
        self.cleaned += cleaned
        if self.rounds == 1 or cleaned:
            log.info(
                "sbc_addresses updated addresses=%s cleaned=%d",
                ",".join(r.ipv4 for r in records) or "-",
                cleaned,
            )
        return True


def build_keeper(pool: aiomysql.Pool, front: object, *, keep_alive_ms: int, dead_sbc_s: int) -> SbcAddressKeeper:
    """The keeper of the SIP front `front` (anything with a hostport string `sbc_address`)."""
    return SbcAddressKeeper(
        pool,
        lambda: str(getattr(front, "sbc_address", "") or ""),
        keep_alive_ms=keep_alive_ms,
        dead_sbc_s=dead_sbc_s,
    )
