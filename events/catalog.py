"""The list of every event type the service knows, and the codec built from it."""

from __future__ import annotations

from events.carriers import CARRIER_EVENTS
from events.codec import EventCodec, Upcaster
from events.envelope import Event
from events.pinger import PINGER_EVENTS
from events.registration import (
    BlockStarted,
    DeviceLimitReached,
    OptionsReceived,
    RegisterChallenged,
    RegisterReceived,
    RegisterRejected,
    RegistrationExpired,
    RegistrationGranted,
    RegistrationRefreshed,
    RegistrationRemoved,
    ReplyIssued,
    RequestExpired,
    WebhookFailed,
)
from events.servers import ServerCheckedIn, ServerExpired, ServerLeft

EVENT_TYPES: tuple[type[Event], ...] = (
    RegisterReceived,
    OptionsReceived,
    RegisterChallenged,
    RegisterRejected,
    RegistrationGranted,
    RegistrationRefreshed,
    RegistrationRemoved,
    RegistrationExpired,
    RequestExpired,
    DeviceLimitReached,
    WebhookFailed,
    BlockStarted,
    ReplyIssued,
    ServerCheckedIn,
    ServerLeft,
    ServerExpired,
    *CARRIER_EVENTS,
    *PINGER_EVENTS,
)

# (type, from_version) -> pure function of the old payload to the next version's payload.
UPCASTERS: dict[tuple[str, int], Upcaster] = {}


def default_codec() -> EventCodec:
    return EventCodec(EVENT_TYPES, UPCASTERS)
