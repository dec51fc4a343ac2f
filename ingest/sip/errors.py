"""The one error the SIP codec raises on bad input."""

from __future__ import annotations

__all__ = ["SipParseError"]


class SipParseError(ValueError):
    """Malformed SIP input: a message, header value, URI or digest parameter list.

    Every parser in :mod:`ingest.sip` raises this, and only this, on bad input, so a listener can answer 400
    (or drop the datagram) with one ``except SipParseError``.
    """
