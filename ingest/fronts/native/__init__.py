"""The native SIP front: UDP, TCP, TLS and WebSocket listeners with RFC 3261 transactions."""

from ingest.fronts.native.front import NativeFront

__all__ = ["NativeFront"]
