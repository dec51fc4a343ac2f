"""The InfluxDB settings: JAMBONES_TIME_SERIES_HOST alone (v1 API) or with SIDECAR_TIME_SERIES_* (2.x API)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from runtime.errors import ConfigError
from runtime.settings import Secret, Settings
from tests.unit.test_settings import BASE

TOKEN = "tok-3f9a1c0e7d"
V2 = {
    "JAMBONES_TIME_SERIES_HOST": "influx.internal",
    "SIDECAR_TIME_SERIES_TOKEN": TOKEN,
    "SIDECAR_TIME_SERIES_ORG": "o",
}


def test_host_alone_is_the_v1_api() -> None:
    s = Settings.from_env({**BASE, "JAMBONES_TIME_SERIES_HOST": "influx.internal"})
    assert s.time_series_host == "influx.internal" and s.influx_v2 is None


def test_a_token_chooses_the_2x_api_with_buckets_named_after_the_databases() -> None:
    s = Settings.from_env({**BASE, **V2})
    assert s.influx_v2 is not None
    assert s.influx_v2.token == Secret(TOKEN) and s.influx_v2.org == "o"
    assert (s.influx_v2.alerts_bucket, s.influx_v2.stats_bucket) == (None, None)
    assert TOKEN not in repr(s)


def test_buckets_may_be_named() -> None:
    env = {**BASE, **V2, "SIDECAR_TIME_SERIES_ALERTS_BUCKET": "jambonz alerts", "SIDECAR_TIME_SERIES_STATS_BUCKET": "s"}
    v2 = Settings.from_env(env).influx_v2
    assert v2 is not None and (v2.alerts_bucket, v2.stats_bucket) == ("jambonz alerts", "s")


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({k: v for k, v in V2.items() if k != "SIDECAR_TIME_SERIES_ORG"}, "SIDECAR_TIME_SERIES_ORG"),
        ({k: v for k, v in V2.items() if k != "JAMBONES_TIME_SERIES_HOST"}, "JAMBONES_TIME_SERIES_HOST"),
        ({"JAMBONES_TIME_SERIES_HOST": "h", "SIDECAR_TIME_SERIES_ORG": "o"}, "SIDECAR_TIME_SERIES_TOKEN"),
        ({"SIDECAR_TIME_SERIES_STATS_BUCKET": "b"}, "SIDECAR_TIME_SERIES_TOKEN"),
        ({**V2, "SIDECAR_TIME_SERIES_ALERTS_BUCKET": "_monitoring"}, "SIDECAR_TIME_SERIES_ALERTS_BUCKET"),
        ({**V2, "SIDECAR_TIME_SERIES_ORG": "  "}, "SIDECAR_TIME_SERIES_ORG"),
    ],
)
def test_a_missing_or_bad_setting_is_named(env: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env({**BASE, **env})
    assert info.value.variable == named
    assert TOKEN not in str(info.value)


def test_cli_exits_2_with_one_line_naming_the_setting() -> None:
    env = {**BASE, **V2, "SIDECAR_TIME_SERIES_ALERTS_BUCKET": "_tasks", "PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        [sys.executable, "-m", "runtime.cli", "run"], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "sbc-sidecar: configuration error: SIDECAR_TIME_SERIES_ALERTS_BUCKET must not start with '_' "
        "(InfluxDB's system buckets), got '_tasks'"
    ]
    assert TOKEN not in result.stderr
