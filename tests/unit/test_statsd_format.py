"""StatsD lines as hot-shots writes them (SPEC 5.2), and the STATS_* settings."""

from __future__ import annotations

import pytest

from runtime.errors import ConfigError
from runtime.settings import _Reader
from runtime.statsd import format_metric, merge_tags


def test_dogstatsd_lines_carry_type_rate_and_tags() -> None:
    assert format_metric("sbc.users.count", 3, "g") == "sbc.users.count:3|g"
    line = format_metric("sbc.registration.total.response_time", 12.5, "h", ["status:200"])
    assert line == "sbc.registration.total.response_time:12.5|h|#status:200"
    line = format_metric("app.hook.response_time", 7, "h", ["hook_type:auth", "status:403"], sample_rate=0.5)
    assert line == "app.hook.response_time:7|h|@0.5|#hook_type:auth,status:403"
    assert format_metric("featureservers", 2, "g", prefix="sbc1.") == "sbc1.featureservers:2|g"


def test_telegraf_lines_put_tags_after_the_name() -> None:
    line = format_metric("sbc.registration.total.response_time", 4, "h", ["env:prod", "status:401"], telegraf=True)
    assert line == "sbc.registration.total.response_time,env=prod,status=401:4|h"


def test_a_metric_tag_replaces_the_global_tag_of_its_key() -> None:
    assert merge_tags(["env:prod", "status:x"], ["status:200"]) == ["env:prod", "status:200"]


def test_stats_settings_are_read_and_checked() -> None:
    statsd = _Reader(
        {
            "STATS_HOST": "10.0.0.9",
            "STATS_PORT": "9125",
            "STATS_PROTOCOL": "TCP",
            "STATS_PREFIX": "sbc.",
            "STATS_TAGS": "env:prod, region:eu",
            "STATS_SAMPLE_RATE": "0.25",
            "STATS_MAX_BUFFER_SIZE": "1400",
            "STATS_BUFFER_FLUSH_INTERVAL": "500",
            "STATS_TELEGRAF": "1",
        }
    ).statsd()
    assert (statsd.host, statsd.port, statsd.protocol, statsd.prefix) == ("10.0.0.9", 9125, "tcp", "sbc.")
    assert statsd.tags == ("env:prod", "region:eu") and statsd.sample_rate == 0.25 and statsd.telegraf
    assert (statsd.max_buffer_size, statsd.buffer_flush_interval_ms) == (1400, 500)
    defaults = _Reader({}).statsd()
    assert (defaults.host, defaults.port, defaults.protocol, defaults.telegraf) == ("127.0.0.1", 8125, "udp", False)
    with pytest.raises(ConfigError, match="STATS_PROTOCOL"):
        _Reader({"STATS_PROTOCOL": "uds"}).statsd()
    with pytest.raises(ConfigError, match="STATS_SAMPLE_RATE"):
        _Reader({"STATS_SAMPLE_RATE": "2"}).statsd()
