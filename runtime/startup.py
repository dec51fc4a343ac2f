"""Start-up checks of the stores: a Redis or MySQL that cannot serve stops `run` with one line naming the setting.

A store that is down, a wrong password, a Sentinel that knows no such master, a Redis Cluster that does not serve
all its slots or is given a database other than 0: each is a configuration problem at start, so each becomes a
`ConfigError` (exit status 2, the variable and the cause in one line), never a traceback. Once running, the same
faults are transient (`StoreUnavailable`, `/health` says which store fails) and the service waits for the store to
come back.
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import AsyncExitStack

import aiomysql
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import MasterNotFoundError
from redis.backoff import NoBackoff
from redis.exceptions import AuthenticationError, NoPermissionError, RedisError, ResponseError

from runtime.connections import open_mysql, probe_client
from runtime.errors import ConfigError
from runtime.settings import MysqlSettings, RedisSettings

log = logging.getLogger(__name__)

REDIS_CHECK_TIMEOUT_S = 10.0
SENTINEL_PROBE_TIMEOUT_S = 2.0

# MySQL client and server error numbers (pymysql's OperationalError args[0]).
_MYSQL_ACCESS_DENIED = 1045
_MYSQL_DB_ACCESS_DENIED = 1044
_MYSQL_UNKNOWN_DATABASE = 1049
_MYSQL_UNREACHABLE = (2003, 2005, 2006, 2013)


def _where(settings: RedisSettings) -> str:
    if settings.sentinels:
        sentinels = ",".join(f"{host}:{port}" for host, port in settings.sentinels)
        return f"the master {settings.sentinel_master_name!r} of the Sentinels {sentinels}"
    return f"{settings.host}:{settings.port}"


def _cause(exc: BaseException) -> str:
    text = str(exc).strip().replace("\n", " ")
    return text or type(exc).__name__


async def check_redis(redis: Redis, settings: RedisSettings, timeout_s: float = REDIS_CHECK_TIMEOUT_S) -> None:
    """PING and INFO cluster (and, on a Cluster, CLUSTER INFO); raises `ConfigError` naming the setting that is
    wrong, with Redis's answer."""
    # The node itself, tried once (Sentinel: the client, whose errors name the Sentinel's failure as they are).
    probe = redis if settings.sentinels else probe_client(settings)
    state = ""
    try:
        async with asyncio.timeout(timeout_s):
            await probe.ping()
            cluster = await probe.info("cluster")
            if int(cluster.get("cluster_enabled", 0) or 0) == 1:
                info = await probe.execute_command("CLUSTER", "INFO")
                state = _cluster_state(info)
    except MasterNotFoundError as exc:
        raise await _sentinel_error(settings, exc) from exc
    except AuthenticationError as exc:
        raise _auth_error(settings, exc) from exc
    except NoPermissionError as exc:
        raise _permission_error(settings, exc) from exc
    except ResponseError as exc:
        if "SELECT is not allowed in cluster mode" in str(exc):
            problem = f"is {settings.db}, but {_where(settings)} is a Redis Cluster node, which has database 0 only"
            raise ConfigError("SIDECAR_REDIS_DB", problem) from exc
        if "DB index" in str(exc):
            problem = f"{settings.db} refused by {_where(settings)}: {_cause(exc)}"
            raise ConfigError("SIDECAR_REDIS_DB", problem) from exc
        raise ConfigError(_host_variable(settings), f"{_where(settings)} refused the check: {_cause(exc)}") from exc
    except (RedisError, OSError, TimeoutError) as exc:
        cause = _cause(exc) if not isinstance(exc, TimeoutError) else f"no answer within {timeout_s:g} s"
        raise ConfigError(_host_variable(settings), f"{_where(settings)}: Redis unreachable: {cause}") from exc
    finally:
        if probe is not redis:
            await probe.aclose()
    if state and state != "ok":
        raise ConfigError(
            "JAMBONES_REDIS_HOST",
            f"{_where(settings)} is a node of a Redis Cluster that does not serve (CLUSTER INFO: "
            f"cluster_state:{state}): every slot needs a master that answers",
        )


def _cluster_state(info: object) -> str:
    """`cluster_state` of a CLUSTER INFO answer (text, or the dict redis-py makes of it)."""
    if isinstance(info, dict):
        value = info.get("cluster_state", "")
        return value.decode() if isinstance(value, bytes) else str(value)
    text = info.decode() if isinstance(info, bytes) else str(info)
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if name.strip() == "cluster_state":
            return value.strip()
    return "unknown"


def _host_variable(settings: RedisSettings) -> str:
    return "JAMBONES_REDIS_SENTINELS" if settings.sentinels else "JAMBONES_REDIS_HOST"


def _permission_error(settings: RedisSettings, exc: NoPermissionError) -> ConfigError:
    if settings.sentinels and settings.sentinel_username:
        variable, user = "JAMBONES_REDIS_SENTINEL_USERNAME", settings.sentinel_username
    else:
        variable, user = "JAMBONES_REDIS_USERNAME", settings.username or "default"
    return ConfigError(variable, f"{user!r} lacks a permission on {_where(settings)} (NOPERM): {_cause(exc)}")


def _auth_error(settings: RedisSettings, exc: AuthenticationError) -> ConfigError:
    if settings.sentinels and settings.sentinel_password is not None:
        variable, given = "JAMBONES_REDIS_SENTINEL_PASSWORD", True
    else:
        variable, given = "JAMBONES_REDIS_PASSWORD", settings.password is not None
    if given:
        return ConfigError(variable, f"refused by {_where(settings)} (WRONGPASS): {_cause(exc)}")
    return ConfigError(variable, f"is not set, and {_where(settings)} requires a password (NOAUTH): {_cause(exc)}")


async def _sentinel_error(settings: RedisSettings, exc: MasterNotFoundError) -> ConfigError:
    """Asks the Sentinels themselves why: none answers, or none knows the master name."""
    name = settings.sentinel_master_name or ""
    password = settings.sentinel_server_password.reveal() if settings.sentinel_server_password else None
    answered: list[str] = []
    last_error = _cause(exc)
    for host, port in settings.sentinels:
        sentinel = Redis(
            host=host,
            port=port,
            password=password,
            socket_connect_timeout=SENTINEL_PROBE_TIMEOUT_S,
            retry=Retry(NoBackoff(), 0),  # one try each: the cause, not redis-py's retries
        )
        try:
            async with asyncio.timeout(SENTINEL_PROBE_TIMEOUT_S):
                master = await sentinel.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", name)
        except (RedisError, OSError, TimeoutError) as probe_error:
            last_error = f"{host}:{port}: {_cause(probe_error) if str(probe_error) else 'no answer in time'}"
            continue
        finally:
            await sentinel.aclose()
        if master:
            address = ":".join(v.decode() if isinstance(v, bytes) else str(v) for v in master)
            return ConfigError(
                "JAMBONES_REDIS_SENTINEL_MASTER_NAME",
                f"{name!r}: the Sentinels name its master at {address}, which does not answer: {_cause(exc)}",
            )
        answered.append(f"{host}:{port}")
    sentinels = ",".join(f"{host}:{port}" for host, port in settings.sentinels)
    if answered:
        return ConfigError(
            "JAMBONES_REDIS_SENTINEL_MASTER_NAME", f"{name!r} is not a master the Sentinels {sentinels} monitor"
        )
    return ConfigError("JAMBONES_REDIS_SENTINELS", f"{sentinels}: no Sentinel answers ({last_error})")


async def open_mysql_checked(stack: AsyncExitStack, settings: MysqlSettings, prefix: str) -> aiomysql.Pool:
    """The pool of `open_mysql` entered on `stack`; a failure to connect is a `ConfigError` naming the setting
    (`prefix` is JAMBONES_MYSQL or JAMBONES_MYSQL_WRITE)."""
    try:
        return await stack.enter_async_context(open_mysql(settings))
    except aiomysql.Error as exc:
        raise mysql_error(settings, prefix, exc) from exc
    except (OSError, TimeoutError) as exc:
        where = f"{settings.host}:{settings.port}"
        raise ConfigError(f"{prefix}_HOST", f"{where}: MySQL unreachable: {_cause(exc)}") from exc


def mysql_error(settings: MysqlSettings, prefix: str, exc: aiomysql.Error) -> ConfigError:
    code = exc.args[0] if exc.args and isinstance(exc.args[0], int) else None
    message = str(exc.args[1]) if len(exc.args) > 1 else _cause(exc)
    where = f"{settings.host}:{settings.port}"
    if code == _MYSQL_ACCESS_DENIED:
        return ConfigError(f"{prefix}_PASSWORD", f"(or _USER {settings.user!r}) refused by MySQL at {where}: {message}")
    if code == _MYSQL_DB_ACCESS_DENIED:
        return ConfigError(f"{prefix}_USER", f"{settings.user!r} may not use the database at {where}: {message}")
    if code == _MYSQL_UNKNOWN_DATABASE:
        fix = "create it with `sbc-sidecar db init`"
        return ConfigError(f"{prefix}_DATABASE", f"{settings.database!r} does not exist at {where}: {fix}")
    if code in _MYSQL_UNREACHABLE:
        return ConfigError(f"{prefix}_HOST", f"{where}: MySQL unreachable: {message}")
    return ConfigError(f"{prefix}_HOST", f"{where}: MySQL refused the connection: {message}")
