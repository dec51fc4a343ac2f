"""The environment file serve.sh writes and every CLI command reads (`--env-file`, SIDECAR_ENV_FILE)."""

from __future__ import annotations

from pathlib import Path

import pytest

from runtime.envfile import parse_env_file, with_env_file
from runtime.errors import ConfigError


def test_lines_are_read_as_a_shell_reads_them() -> None:
    text = "\n".join(
        [
            "# written by serve.sh",
            "",
            "JAMBONES_REDIS_HOST=127.0.0.1",
            "export SIDECAR_REDIS_DB='7'",
            "JAMBONES_MYSQL_PASSWORD=''",
            "ENCRYPTION_SECRET='it'\\''s #not a comment'",
            'JAMBONES_CLUSTER_ID="east 1"',
            "EMPTY=",
        ]
    )
    assert parse_env_file(text) == {
        "JAMBONES_REDIS_HOST": "127.0.0.1",
        "SIDECAR_REDIS_DB": "7",
        "JAMBONES_MYSQL_PASSWORD": "",
        "ENCRYPTION_SECRET": "it's #not a comment",
        "JAMBONES_CLUSTER_ID": "east 1",
        "EMPTY": "",
    }


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("JAMBONES_REDIS_HOST", "want NAME=value"),
        ("1BAD=x", "want NAME=value"),
        ("A=two words", "quote a value that has spaces"),
        ("A='unclosed", "No closing quotation"),
    ],
)
def test_a_bad_line_names_the_file_and_the_line(line: str, problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_env_file(f"OK=1\n{line}\n", source="/etc/sidecar.env")
    assert caught.value.variable == "SIDECAR_ENV_FILE"
    assert "/etc/sidecar.env line 2" in str(caught.value) and problem in str(caught.value)


def test_the_environment_wins_over_the_file_and_the_option_over_the_variable(tmp_path: Path) -> None:
    first, second = tmp_path / "first.env", tmp_path / "second.env"
    first.write_text("JAMBONES_REDIS_HOST=10.0.0.1\nJAMBONES_CLUSTER_ID=from-file\n")
    second.write_text("JAMBONES_REDIS_HOST=10.0.0.2\n")
    env = {"SIDECAR_ENV_FILE": str(first), "JAMBONES_CLUSTER_ID": "from-env"}
    assert with_env_file(env, None) == {**env, "JAMBONES_REDIS_HOST": "10.0.0.1"}
    assert with_env_file(env, str(second))["JAMBONES_REDIS_HOST"] == "10.0.0.2"
    assert with_env_file({"A": "1"}, None) == {"A": "1"}


def test_a_missing_file_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read .*nowhere.env"):
        with_env_file({}, str(tmp_path / "nowhere.env"))
