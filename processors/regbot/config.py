"""The regbot's reads of the jambonz configuration in MySQL (SPEC 4.2, 5.4), and its one write (4.2's invalid
From domain goes through the carriers projection, so this module only reads)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import aiomysql

from processors.regbot.targets import Carrier, Gateway, Plan, plan

Row = dict[str, object]

CARRIERS_SQL = (
    "SELECT vc.* FROM voip_carriers vc LEFT JOIN accounts a ON vc.account_sid = a.account_sid "
    "WHERE vc.account_sid IS NULL OR a.is_active = 1"
)
GATEWAYS_SQL = "SELECT * FROM sip_gateways WHERE voip_carrier_sid IN ({})"
ACCOUNT_REALM_SQL = "SELECT account_sid, sip_realm FROM accounts WHERE account_sid IN ({})"
SYSTEM_SQL = "SELECT sip_domain_name FROM system_information LIMIT 1"


async def query(pool: aiomysql.Pool, sql: str, args: Sequence[object] = (), timeout_s: float = 10.0) -> list[Row]:
    async with asyncio.timeout(timeout_s):
        conn = await pool.acquire()
        try:
            async with conn.cursor(aiomysql.DictCursor) as cursor:
                await cursor.execute(sql, args)
                return list(await cursor.fetchall())
        except BaseException:
            conn.close()  # interrupted mid-query: never hand it back to the pool
            raise
        finally:
            pool.release(conn)


async def load_plan(pool: aiomysql.Pool, *, contact_use_ip: bool, expires_s: int) -> Plan:
    """Every gateway to register now, from the carriers, gateways, account realms and system domain."""
    carriers = [Carrier.from_row(row) for row in await query(pool, CARRIERS_SQL)]
    wanted = [c for c in carriers if c.requires_register and c.is_active]
    if not wanted:
        return Plan((), ())
    marks = ",".join(["%s"] * len(wanted))
    gateway_rows = await query(pool, GATEWAYS_SQL.format(marks), [c.voip_carrier_sid for c in wanted])
    order = {c.voip_carrier_sid: i for i, c in enumerate(wanted)}
    gateways = sorted(
        (Gateway.from_row(row) for row in gateway_rows),
        key=lambda g: (order.get(g.voip_carrier_sid, 0), g.sip_gateway_sid),
    )
    account_sids = sorted({c.account_sid for c in wanted if c.account_sid and not c.register_public_ip_in_contact})
    realms: dict[str, str | None] = {}
    if account_sids:
        rows = await query(pool, ACCOUNT_REALM_SQL.format(",".join(["%s"] * len(account_sids))), account_sids)
        realms = {str(r["account_sid"]): (str(r["sip_realm"]) if r.get("sip_realm") else None) for r in rows}
    system = await query(pool, SYSTEM_SQL)
    sip_domain = str(system[0]["sip_domain_name"]) if system and system[0].get("sip_domain_name") else None
    return plan(wanted, gateways, realms, sip_domain, contact_use_ip=contact_use_ip, expires_s=expires_s)
