"""Settings from the environment: required variables, defaults of SPEC 1.6, validation."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from runtime.errors import ConfigError
from runtime.settings import Settings

BASE = {
    "JAMBONES_MYSQL_HOST": "127.0.0.1",
    "JAMBONES_MYSQL_USER": "jambones",
    "JAMBONES_MYSQL_PASSWORD": "pw",
    "JAMBONES_MYSQL_DATABASE": "jambones",
    "JAMBONES_REDIS_HOST": "127.0.0.1",
    "ENCRYPTION_SECRET": "s3cret",
}
DRACHTIO = {"DRACHTIO_HOST": "127.0.0.1", "DRACHTIO_PORT": "9022", "DRACHTIO_SECRET": "cymru"}


def without(env: dict[str, str], name: str) -> dict[str, str]:
    return {k: v for k, v in env.items() if k != name}


@pytest.mark.parametrize(
    ("env", "missing"),
    [
        (without(BASE, "JAMBONES_MYSQL_HOST"), "JAMBONES_MYSQL_HOST"),
        (without(BASE, "JAMBONES_MYSQL_USER"), "JAMBONES_MYSQL_USER"),
        (without(BASE, "JAMBONES_MYSQL_PASSWORD"), "JAMBONES_MYSQL_PASSWORD"),
        (without(BASE, "JAMBONES_MYSQL_DATABASE"), "JAMBONES_MYSQL_DATABASE"),
        (without(BASE, "JAMBONES_REDIS_HOST"), "JAMBONES_REDIS_HOST"),
        (without(BASE, "ENCRYPTION_SECRET"), "ENCRYPTION_SECRET"),
        ({**BASE, **without(DRACHTIO, "DRACHTIO_PORT")}, "DRACHTIO_PORT"),
        ({**BASE, **without(DRACHTIO, "DRACHTIO_SECRET")}, "DRACHTIO_SECRET"),
        ({**BASE, "SIDECAR_SIP_FRONT": "drachtio"}, "DRACHTIO_HOST"),
        ({**BASE, "JAMBONES_REDIS_SENTINELS": "a:26379"}, "JAMBONES_REDIS_SENTINEL_MASTER_NAME"),
    ],
)
def test_missing_required_variable_is_named(env: dict[str, str], missing: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env(env)
    assert info.value.variable == missing
    assert str(info.value).startswith(missing)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("JAMBONES_MYSQL_PORT", "abc"),
        ("JAMBONES_REDIS_PORT", "70000"),
        ("EXPIRES_INTERVAL", "-5"),
        ("SIDECAR_SIP_LISTEN", "udp:0.0.0.0"),
        ("SIDECAR_SIP_LISTEN", "sctp:0.0.0.0:5060"),
        ("SIDECAR_HTTP_LISTEN", "localhost"),
        ("JAMBONES_NETWORK_CIDR", "10.0.0.0/99"),
        ("OPTIONS_RESPONSE_REMOVE", "503,abc"),
        ("SIDECAR_WEBHOOK_TIMEOUT_S", "soon"),
        ("JAMBONES_LOGLEVEL", "chatty"),
        ("SIDECAR_SIP_FRONT", "kamailio"),
        ("SIDECAR_PROJECTION_LINGER_MS", "-1"),
        ("SIDECAR_MAX_PENDING", "lots"),
        ("SIDECAR_PROJECTION_LINGER_MS", "a while"),
    ],
)
def test_bad_value_is_named(name: str, value: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env({**BASE, name: value})
    assert info.value.variable == name
    assert name in str(info.value)


def test_defaults_follow_the_original() -> None:
    s = Settings.from_env(BASE)
    assert s.mysql.port == 3306 and s.mysql.connection_limit == 10 and s.mysql.refresh_ttl_s is None
    assert s.mysql_write is None
    assert (s.redis.host, s.redis.port) == ("127.0.0.1", 6379)
    assert s.eventlog.cluster_id == "default"
    assert s.sip.network_cidrs == ("192.168.0.0/24", "172.16.0.0/16", "10.0.0.0/8")
    assert s.sbc_public_address_keep_alive_ms == 900_000
    assert s.dead_sbc_s == 3600
    assert s.expires_interval_ms == 60_000 and s.check_expires_interval_ms == 20_000
    assert s.send_options_ping_interval_s == 60 and s.options_ping_ttl_s == 300
    assert s.options_response_remove == () and s.register_response_remove == ()
    assert s.regbot_failure_threshold == 3 and s.regbot_failure_retry_interval_s == 300
    assert s.regbot_default_expires_s == 3600 and s.regbot_min_expires_s == 30
    assert s.regbot_user_agent == "Jambonz 0.9.6"
    assert (s.regbot_batch_size, s.regbot_batch_sleep_ms) == (10, 250)
    assert s.socket_path == "/tmp/sbc-sip-sidecar.sock"
    assert s.log_level == "info"
    assert s.hosting is False and s.legacy_crypto is False and s.enable_metrics is False
    assert s.time_series_host is None  # optional: alerts are off when unset
    # native SIP front when DRACHTIO_HOST is unset; drachtio variables not needed
    assert s.sip.front == "native" and s.drachtio is None
    assert [str(x) for x in s.sip.listen] == ["udp:0.0.0.0:5060", "tcp:0.0.0.0:5060"]
    assert s.http_listen == ("127.0.0.1", 9090)
    assert s.webhook_timeout_s == 5.0 and s.nonce_ttl_s == 300
    assert s.eventlog.retention_s == 7 * 24 * 3600


def test_drachtio_front_when_drachtio_host_is_set() -> None:
    s = Settings.from_env({**BASE, **DRACHTIO})
    assert s.sip.front == "drachtio"
    assert s.drachtio is not None and (s.drachtio.host, s.drachtio.port) == ("127.0.0.1", 9022)
    assert s.drachtio.secret.reveal() == "cymru"


def test_hosting_is_on_for_any_non_empty_value_even_zero() -> None:
    assert Settings.from_env({**BASE, "JAMBONES_HOSTING": "0"}).hosting is True
    assert Settings.from_env({**BASE, "JAMBONES_HOSTING": ""}).hosting is False


def test_jwt_secret_is_the_fallback_and_secrets_are_masked() -> None:
    s = Settings.from_env({**without(BASE, "ENCRYPTION_SECRET"), "JWT_SECRET": "jwt-secret"})
    assert s.encryption_secret.reveal() == "jwt-secret"
    assert "jwt-secret" not in repr(s) and "pw" not in repr(s.mysql)


def test_write_pool_only_with_all_four_variables() -> None:
    partial = {**BASE, "JAMBONES_MYSQL_WRITE_HOST": "w"}
    assert Settings.from_env(partial).mysql_write is None
    full = {**partial, "JAMBONES_MYSQL_WRITE_USER": "u", "JAMBONES_MYSQL_WRITE_PASSWORD": "p",
            "JAMBONES_MYSQL_WRITE_DATABASE": "d"}
    write = Settings.from_env(full).mysql_write
    assert write is not None and write.host == "w" and write.port == 3306


def test_sentinels_parse_with_default_port() -> None:
    s = Settings.from_env({**without(BASE, "JAMBONES_REDIS_HOST"), "JAMBONES_REDIS_SENTINELS": "s1,s2:26380",
                           "JAMBONES_REDIS_SENTINEL_MASTER_NAME": "mymaster"})
    assert s.redis.sentinels == (("s1", 26379), ("s2", 26380))


def test_tls_listener_needs_cert_and_key() -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env({**BASE, "SIDECAR_SIP_LISTEN": "tls:127.0.0.1:5061"})
    assert info.value.variable == "SIDECAR_TLS_CERT"


def test_status_code_lists() -> None:
    s = Settings.from_env({**BASE, "OPTIONS_RESPONSE_REMOVE": "403, 404", "REGISTER_RESPONSE_REMOVE": "403"})
    assert s.options_response_remove == (403, 404) and s.register_response_remove == (403,)


@pytest.mark.parametrize("missing", ["JAMBONES_MYSQL_HOST", "JAMBONES_REDIS_HOST", "ENCRYPTION_SECRET"])
def test_cli_exits_2_naming_the_variable(missing: str) -> None:
    env = without(BASE, missing)
    env["PATH"] = "/usr/bin:/bin"
    result = subprocess.run([sys.executable, "-m", "runtime.cli", "run"], env=env, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2
    assert missing in result.stderr


def test_max_pending_defaults_to_1000_and_may_be_off() -> None:
    assert Settings.from_env(BASE).max_pending == 1000
    assert Settings.from_env({**BASE, "SIDECAR_MAX_PENDING": "0"}).max_pending == 0


def test_projection_linger_defaults_to_20_ms_and_may_be_off() -> None:
    assert Settings.from_env(BASE).eventlog.projection_linger_ms == 20
    assert Settings.from_env({**BASE, "SIDECAR_PROJECTION_LINGER_MS": "0"}).eventlog.projection_linger_ms == 0


def test_dns_servers_and_outbound_tls_verification(tmp_path: Path) -> None:
    sip = Settings.from_env(BASE).sip
    assert (sip.dns_servers, sip.tls_verify) == ((), "off")  # the system's resolver; certificates unchecked
    env = {**BASE, "SIDECAR_DNS_SERVERS": "127.0.0.1:5353, 10.0.0.2,[::1]:53", "SIDECAR_SIP_TLS_VERIFY": "System"}
    sip = Settings.from_env(env).sip
    assert sip.dns_servers == (("127.0.0.1", 5353), ("10.0.0.2", 53), ("::1", 53)) and sip.tls_verify == "system"
    ca = tmp_path / "ca.pem"
    ca.write_text("")
    assert Settings.from_env({**BASE, "SIDECAR_SIP_TLS_VERIFY": str(ca)}).sip.tls_verify == str(ca)
    for name, value in [
        ("SIDECAR_DNS_SERVERS", "dns.example:53"),
        ("SIDECAR_DNS_SERVERS", "127.0.0.1:0"),
        ("SIDECAR_SIP_TLS_VERIFY", str(tmp_path / "missing.pem")),
    ]:
        with pytest.raises(ConfigError) as error:
            Settings.from_env({**BASE, name: value})
        assert error.value.variable == name
