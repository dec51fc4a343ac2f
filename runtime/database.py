"""`sbc-sidecar db init`: create the jambonz tables we use, and optionally a demo tenant.

Idempotent and quiet: only missing tables are created (no `already exists` warnings), the demo tenant is
brought to the state asked for, and the outcome is one line.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources

import aiomysql

from runtime.errors import ConfigError
from runtime.settings import MysqlSettings, _Reader

DEMO_REALM = "sip.demo.local"
DEMO_USERNAME = "demo"
DEMO_PASSWORD = "demo-password"
DEMO_WEBHOOK_USER = "foo"
DEMO_WEBHOOK_PASSWORD = "bar"

_CREATE_TABLE = re.compile(r"CREATE\s+TABLE\s+IF\s+NOT\s+EXISTS\s+`?(\w+)`?", re.IGNORECASE)


def mysql_settings_from_env(env: Mapping[str, str]) -> MysqlSettings:
    settings = _Reader(env).mysql("JAMBONES_MYSQL", required=True)
    assert settings is not None
    return settings


def schema_statements() -> list[str]:
    text = resources.files("runtime").joinpath("schema.sql").read_text()
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("--")]
    return [stmt.strip() for stmt in "\n".join(lines).split(";") if stmt.strip()]


def schema_tables() -> list[tuple[str, str]]:
    """(table name, its CREATE statement) for every table of schema.sql, in order."""
    tables = []
    for statement in schema_statements():
        match = _CREATE_TABLE.match(statement)
        if match is None:
            raise ValueError(f"schema.sql holds a statement that creates no table: {statement[:60]!r}")
        tables.append((match.group(1), statement))
    return tables


async def apply_schema(connection: aiomysql.Connection) -> list[str]:
    """Creates the tables the selected database lacks; returns their names (none: the schema was up to date)."""
    async with connection.cursor() as cursor:
        await cursor.execute("SELECT table_name FROM information_schema.tables WHERE table_schema = DATABASE()")
        existing = {str(row[0]).lower() for row in await cursor.fetchall()}
        created = []
        for name, statement in schema_tables():
            if name.lower() not in existing:
                await cursor.execute(statement)
                created.append(name)
    return created


@dataclass(frozen=True, slots=True)
class DemoTenant:
    """What `--demo` asks for: an account on `realm` whose client `demo` checks passwords, with or without a hook."""

    encryption_secret: str
    webhook_url: str | None = None
    realm: str = DEMO_REALM
    legacy_crypto: bool = False


async def ensure_demo(connection: aiomysql.Connection, demo: DemoTenant) -> str:
    """A service provider, an account on the realm and a client `demo` / `demo-password`, as `demo` asks.

    Without a webhook url the account has no registration hook, so the `clients` table checks the digest.
    An existing demo account is brought to that state (its hook set or cleared, its client added, or its
    password encrypted again under the current secret). Returns what was done, in a few words.
    """
    async with connection.cursor() as cursor:
        await cursor.execute(
            "SELECT a.account_sid, a.registration_hook_sid, w.url FROM accounts AS a "
            "LEFT JOIN webhooks AS w ON a.registration_hook_sid = w.webhook_sid WHERE a.sip_realm = %s",
            (demo.realm,),
        )
        row = await cursor.fetchone()
        changes: list[str] = []
        if row is None:
            account = str(uuid.uuid4())
            await _insert_account(cursor, account, demo)
            changes.append("created")
        else:
            account, current_hook, current_url = row
            if current_url != demo.webhook_url:
                await cursor.execute(
                    "UPDATE accounts SET registration_hook_sid = %s WHERE account_sid = %s",
                    (await _insert_hook(cursor, demo.webhook_url), account),
                )
                await cursor.execute("DELETE FROM webhooks WHERE webhook_sid = %s", (current_hook,))
                changes.append("webhook set" if demo.webhook_url else "webhook removed")
        changes.extend(await _ensure_client(cursor, account, demo))
    checker = f"webhook {demo.webhook_url}" if demo.webhook_url else "clients table"
    state = ", ".join(changes) if changes else "up to date"
    return f"demo account {demo.realm} {state} (user {DEMO_USERNAME} / {DEMO_PASSWORD}, checked by the {checker})"


async def _insert_hook(cursor: aiomysql.Cursor, url: str | None) -> str | None:
    if url is None:
        return None
    hook = str(uuid.uuid4())
    await cursor.execute(
        "INSERT INTO webhooks (webhook_sid, url, method, username, password) VALUES (%s, %s, 'POST', %s, %s)",
        (hook, url, DEMO_WEBHOOK_USER, DEMO_WEBHOOK_PASSWORD),
    )
    return hook


async def _insert_account(cursor: aiomysql.Cursor, account: str, demo: DemoTenant) -> None:
    provider = str(uuid.uuid4())
    await cursor.execute(
        "INSERT INTO service_providers (service_provider_sid, name, root_domain) VALUES (%s, %s, %s)",
        (provider, f"demo-{provider[:8]}", None),
    )
    await cursor.execute(
        "INSERT INTO accounts (account_sid, name, sip_realm, service_provider_sid, registration_hook_sid, "
        "webhook_secret) VALUES (%s, 'demo', %s, %s, %s, %s)",
        (account, demo.realm, provider, await _insert_hook(cursor, demo.webhook_url), uuid.uuid4().hex[:36]),
    )


async def _ensure_client(cursor: aiomysql.Cursor, account: str, demo: DemoTenant) -> list[str]:
    from processors.registrar.client_password import ClientPasswordCipher, ClientPasswordError

    cipher = ClientPasswordCipher(demo.encryption_secret, legacy_crypto=demo.legacy_crypto)
    await cursor.execute(
        "SELECT client_sid, password, is_active FROM clients WHERE account_sid = %s AND username = %s",
        (account, DEMO_USERNAME),
    )
    row = await cursor.fetchone()
    if row is None:
        await cursor.execute(
            "INSERT INTO clients (client_sid, account_sid, username, password) VALUES (%s, %s, %s, %s)",
            (str(uuid.uuid4()), account, DEMO_USERNAME, cipher.encrypt(DEMO_PASSWORD)),
        )
        return ["client added"]
    client, stored, active = row
    try:
        readable = cipher.decrypt(stored or "") == DEMO_PASSWORD
    except ClientPasswordError:
        readable = False
    if readable and active:
        return []
    await cursor.execute(
        "UPDATE clients SET password = %s, is_active = 1 WHERE client_sid = %s", (cipher.encrypt(DEMO_PASSWORD), client)
    )
    return ["client password reset"]


async def init_database(settings: MysqlSettings, *, demo: DemoTenant | None) -> int:
    """Creates the database and the tables it lacks, and the demo tenant when asked; prints one line."""
    try:
        connection = await aiomysql.connect(
            host=settings.host,
            port=settings.port,
            user=settings.user,
            password=settings.password.reveal(),
            autocommit=True,
            connect_timeout=5,
        )
    except Exception as exc:  # noqa: BLE001 - reported with the setting names, then exit 1
        print(
            f"sbc-sidecar: cannot connect to MySQL at {settings.host}:{settings.port} "
            f"(JAMBONES_MYSQL_HOST/PORT/USER): {exc}"
        )
        return 1
    name = _identifier(settings.database)
    try:
        async with connection.cursor() as cursor:
            await cursor.execute("SELECT 1 FROM information_schema.schemata WHERE schema_name = %s", (name,))
            new_database = await cursor.fetchone() is None
            if new_database:
                await cursor.execute(f"CREATE DATABASE `{name}`")
        await connection.select_db(name)
        created = await apply_schema(connection)
        demo_state = await ensure_demo(connection, demo) if demo is not None else None
    finally:
        connection.close()
    if new_database:
        schema = f"database created with {len(created)} tables"
    elif created:
        schema = f"created tables {', '.join(created)}"
    else:
        schema = "schema up to date"
    parts = [f"{name} on {settings.host}:{settings.port}: {schema}", demo_state]
    print("db init: " + "; ".join(part for part in parts if part))
    return 0


def _identifier(name: str) -> str:
    if not name.replace("_", "").replace("-", "").isalnum():
        raise ConfigError("JAMBONES_MYSQL_DATABASE", f"is not a plain database name: {name!r}")
    return name
