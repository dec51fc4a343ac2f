"""What a webhook's JSON answer means: the grant of an `ok` (SPEC 2.6) and the headers of a refusal.

Anything of the wrong type in the JSON is ignored rather than trusted.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

_HEADER_NAME = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+")


@dataclass(frozen=True, slots=True)
class Grant:
    """The parts of an `ok` verdict the binding uses (SPEC 2.6, 2.7)."""

    expires_s: int | None = None
    call_hook: str | dict[str, object] | None = None
    call_status_hook: str | dict[str, object] | None = None
    allow_direct_app_calling: bool | int = False
    allow_direct_queue_calling: bool | int = False
    allow_direct_user_calling: bool | int = False


def grant_from_webhook(body: dict[str, object]) -> Grant:
    """The fields of an `ok` answer the binding uses; anything of the wrong type is ignored."""
    return Grant(
        expires_s=_positive_int(body.get("expires")),
        call_hook=_hook(body.get("call_hook")),
        call_status_hook=_hook(body.get("call_status_hook")),
        allow_direct_app_calling=_flag(body.get("allow_direct_app_calling")),
        allow_direct_queue_calling=_flag(body.get("allow_direct_queue_calling")),
        allow_direct_user_calling=_flag(body.get("allow_direct_user_calling")),
    )


def _positive_int(value: object) -> int | None:
    """jambonz uses `grant.expires` when truthy; we also require a positive whole number of seconds."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        number = int(value)
    elif isinstance(value, str) and value.strip().isdigit():
        number = int(value)
    else:
        return None
    return number if number > 0 else None


def _hook(value: object) -> str | dict[str, object] | None:
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and all(isinstance(key, str) for key in value):
        return value
    return None


def _flag(value: object) -> bool | int:
    return value if isinstance(value, bool | int) else False


def merge_headers(headers: Sequence[tuple[str, str]], extra: object) -> list[tuple[str, str]]:
    """`headers` with the webhook's `headers` object merged in (a same-named header is replaced).

    Names must be header tokens and values strings or numbers without CR/LF; anything else
    is dropped so a webhook cannot inject headers or break the SIP message.
    """
    merged = list(headers)
    if not isinstance(extra, dict):
        return merged
    for name, value in extra.items():
        if not isinstance(name, str) or not _HEADER_NAME.fullmatch(name):
            continue
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            continue
        text = str(value)
        if "\r" in text or "\n" in text:
            continue
        merged = [(n, v) for n, v in merged if n.lower() != name.lower()]
        merged.append((name, text))
    return merged
