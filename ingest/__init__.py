"""The SIP edge: parses requests, appends them as events, answers with the processors' decisions."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from runtime.services import Services, Worker


def build(services: Services) -> list[Worker]:
    from ingest.service import build_ingest

    return build_ingest(services)
