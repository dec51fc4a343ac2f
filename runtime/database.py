"""`sbc-sidecar db init`: create the jambonz tables we use, and optionally a demo tenant."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping
from importlib import resources

import aiomysql

from runtime.errors import ConfigError
from runtime.settings import MysqlSettings, _Reader

log = logging.getLogger(__name__)

DEMO_REALM = "sip.demo.local"
DEMO_WEBHOOK_USER = "foo"
DEMO_WEBHOOK_PASSWORD = "bar"


def mysql_settings_from_env(env: Mapping[str, str]) -> MysqlSettings:
    settings = _Reader(env).mysql("JAMBONES_MYSQL", required=True)
    assert settings is not None
    return settings


def schema_statements() -> list[str]:
    text = resources.files("runtime").joinpath("schema.sql").read_text()
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("--")]
    return [stmt.strip() for stmt in "\n".join(lines).split(";") if stmt.strip()]


async def apply_schema(connection: aiomysql.Connection) -> None:
    async with connection.cursor() as cursor:
        for statement in schema_statements():
            await cursor.execute(statement)


async def insert_demo(
    connection: aiomysql.Connection, *, encryption_secret: str, webhook_url: str, realm: str = DEMO_REALM
) -> None:
    """A service provider, an account on `realm` with a registration webhook, and a client `demo`."""
    from processors.registrar.client_password import ClientPasswordCipher

    async with connection.cursor() as cursor:
        await cursor.execute("SELECT account_sid FROM accounts WHERE sip_realm = %s", (realm,))
        if await cursor.fetchone():
            log.info("demo account exists realm=%s", realm)
            return
        sp, hook, account = (str(uuid.uuid4()) for _ in range(3))
        await cursor.execute(
            "INSERT INTO webhooks (webhook_sid, url, method, username, password) VALUES (%s, %s, 'POST', %s, %s)",
            (hook, webhook_url, DEMO_WEBHOOK_USER, DEMO_WEBHOOK_PASSWORD),
        )
        await cursor.execute(
            "INSERT INTO service_providers (service_provider_sid, name, root_domain) VALUES (%s, %s, %s)",
            (sp, f"demo-{sp[:8]}", None),
        )
        await cursor.execute(
            "INSERT INTO accounts (account_sid, name, sip_realm, service_provider_sid, registration_hook_sid, "
            "webhook_secret) VALUES (%s, 'demo', %s, %s, %s, %s)",
            (account, realm, sp, hook, uuid.uuid4().hex[:36]),
        )
        if encryption_secret:
            cipher = ClientPasswordCipher(encryption_secret)
            await cursor.execute(
                "INSERT INTO clients (client_sid, account_sid, username, password) VALUES (%s, %s, 'demo', %s)",
                (str(uuid.uuid4()), account, cipher.encrypt("demo-password")),
            )
    log.info("demo account created realm=%s webhook=%s", realm, webhook_url)


async def init_database(settings: MysqlSettings, *, demo: bool, encryption_secret: str, webhook_url: str) -> int:
    """Creates the database if missing, applies the schema, adds the demo data when asked."""
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
    try:
        async with connection.cursor() as cursor:
            await cursor.execute(f"CREATE DATABASE IF NOT EXISTS `{_identifier(settings.database)}`")
        await connection.select_db(settings.database)
        await apply_schema(connection)
        if demo:
            await insert_demo(connection, encryption_secret=encryption_secret, webhook_url=webhook_url)
    finally:
        connection.close()
    print(f"database {settings.database} ready on {settings.host}:{settings.port}")
    return 0


def _identifier(name: str) -> str:
    if not name.replace("_", "").replace("-", "").isalnum():
        raise ConfigError("JAMBONES_MYSQL_DATABASE", f"is not a plain database name: {name!r}")
    return name
