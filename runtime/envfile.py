"""Environment files: the settings `scripts/serve.sh` ran with, for the CLI in any other shell.

One `NAME=value` a line, as a POSIX shell would read it (so the file can also be `source`d): blank
lines and `#` comments are skipped, an `export ` before the name is allowed, the value may be quoted
with `'...'` or `"..."`. Variables set in the process environment win over the file's, so one
command can still override a single setting.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from pathlib import Path

from runtime.errors import ConfigError

ENV_FILE_VARIABLE = "SIDECAR_ENV_FILE"
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def parse_env_file(text: str, *, source: str = "env file") -> dict[str, str]:
    """The variables of an environment file's text; a line that is not `NAME=value` raises ConfigError."""
    values: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[len("export ") :].lstrip()
        name, equals, raw = line.partition("=")
        if not equals or not _NAME.fullmatch(name):
            raise ConfigError(ENV_FILE_VARIABLE, f"{source} line {number}: want NAME=value, got {line[:40]!r}")
        try:
            words = shlex.split(raw)
        except ValueError as exc:
            raise ConfigError(ENV_FILE_VARIABLE, f"{source} line {number}: {exc}") from None
        if len(words) > 1:
            raise ConfigError(ENV_FILE_VARIABLE, f"{source} line {number}: quote a value that has spaces")
        values[name] = words[0] if words else ""
    return values


def read_env_file(path: str | Path) -> dict[str, str]:
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(ENV_FILE_VARIABLE, f"cannot read {path}: {exc.strerror or exc}") from None
    return parse_env_file(text, source=str(path))


def with_env_file(env: Mapping[str, str], path: str | None) -> Mapping[str, str]:
    """`env` over the file at `path`, or at `$SIDECAR_ENV_FILE` when no path is given; `env` alone without either."""
    path = path or env.get(ENV_FILE_VARIABLE) or None
    if path is None:
        return env
    return {**read_env_file(path), **env}
