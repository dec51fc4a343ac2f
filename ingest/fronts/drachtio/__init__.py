"""The drachtio front: a client of drachtio-server's control connection (DRACHTIO.md), inbound mode."""

from ingest.fronts.drachtio.client import DrachtioFront
from ingest.fronts.drachtio.errors import (
    DrachtioAuthenticationError,
    DrachtioCommandError,
    DrachtioConnectionError,
    DrachtioError,
)
from ingest.fronts.drachtio.framing import MAX_OUTGOING_FRAME_BYTES, FrameFormatError, FrameTooLargeError
from ingest.fronts.drachtio.hostports import (
    PublicSipAddresses,
    SbcAddressRecord,
    parse_network_cidrs,
    private_sip_address,
    public_address_records,
    public_sip_addresses,
)
from ingest.fronts.drachtio.link import DrachtioStats
from ingest.fronts.drachtio.request import DrachtioRequest

__all__ = [
    "MAX_OUTGOING_FRAME_BYTES",
    "DrachtioAuthenticationError",
    "DrachtioCommandError",
    "DrachtioConnectionError",
    "DrachtioError",
    "DrachtioFront",
    "DrachtioRequest",
    "DrachtioStats",
    "FrameFormatError",
    "FrameTooLargeError",
    "PublicSipAddresses",
    "SbcAddressRecord",
    "parse_network_cidrs",
    "private_sip_address",
    "public_address_records",
    "public_sip_addresses",
]
