"""SIP fronts: the native asyncio SIP transport and the drachtio-server client, behind one interface."""

from ingest.fronts.front import (
    ClientAnswer,
    IncomingRequest,
    OutboundRequest,
    RequestHandler,
    SipFront,
    TransportFacts,
)

__all__ = ["ClientAnswer", "IncomingRequest", "OutboundRequest", "RequestHandler", "SipFront", "TransportFacts"]
