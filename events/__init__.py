"""The event contract: event types, the codec, stream and key names. Pure, no I/O."""

from events.catalog import EVENT_TYPES, default_codec
from events.codec import EventCodec, EventDecodeError
from events.envelope import Event, new_event_id, now_ms, stamp, utc_now
from events.registration import (
    DeviceLimitReached,
    DigestCredentials,
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
    RequestSummary,
    WebhookFailed,
)
from events.servers import ServerCheckedIn, ServerExpired, ServerLeft
from events.streams import StreamNames, partition_of, user_key

__all__ = [
    "EVENT_TYPES",
    "DeviceLimitReached",
    "DigestCredentials",
    "Event",
    "EventCodec",
    "EventDecodeError",
    "OptionsReceived",
    "RegisterChallenged",
    "RegisterReceived",
    "RegisterRejected",
    "RegistrationExpired",
    "RequestExpired",
    "RequestSummary",
    "RegistrationGranted",
    "RegistrationRefreshed",
    "RegistrationRemoved",
    "ReplyIssued",
    "ServerCheckedIn",
    "ServerExpired",
    "ServerLeft",
    "StreamNames",
    "WebhookFailed",
    "default_codec",
    "new_event_id",
    "now_ms",
    "partition_of",
    "stamp",
    "user_key",
    "utc_now",
]
