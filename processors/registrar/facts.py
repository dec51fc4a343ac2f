"""What the registrar's shell gathers for `decide()`: MySQL rows, the cached binding, the webhook verdict.

Each fact of `Facts` is None until gathered. A lookup that found nothing is `NOT_FOUND`; a
store that failed is a `StoreFailure`, which `decide()` turns into the answer SPEC 2.2 names.
No type here does I/O; secrets (webhook and client passwords) are kept out of every repr.
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass, field

import msgspec

from processors.registrar.throttle import ThrottleState


class Absent(enum.Enum):
    NOT_FOUND = "not-found"


NOT_FOUND = Absent.NOT_FOUND


@dataclass(frozen=True, slots=True)
class StoreFailure:
    """MySQL (or Redis) could not answer. `refused`: it could not even be connected to.

    jambonz lets a REGISTER through the account/limit check when the error says
    `connect ECONNREFUSED`; `refused` is our equivalent (SPEC 2.2).
    """

    refused: bool
    detail: str


@dataclass(frozen=True, slots=True)
class RegistrationHook:
    """The account's registration webhook (`webhooks` row); the password is stored in plaintext."""

    url: str
    method: str  # as in the DB, normally "GET" or "POST"
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    webhook_sid: str | None = None


@dataclass(frozen=True, slots=True)
class Account:
    account_sid: str
    is_active: bool
    webhook_secret: str = field(repr=False)
    service_provider_sid: str | None = None
    sip_realm: str | None = None
    device_to_call_ratio: int = 5
    registration_hook: RegistrationHook | None = None


@dataclass(frozen=True, slots=True)
class Capacity:
    """One subscribed product of an account: category and quantity (SPEC 2.4)."""

    category: str
    quantity: int


@dataclass(frozen=True, slots=True)
class Client:
    """A `clients` row; `password` is the encrypted JSON text."""

    client_sid: str
    is_active: bool
    password: str | None = field(default=None, repr=False)
    allow_direct_app_calling: bool = True
    allow_direct_queue_calling: bool = True
    allow_direct_user_calling: bool = True


class WebhookFailure(enum.Enum):
    UNREACHABLE = "unreachable"  # connection refused, DNS, TLS, any client error
    TIMEOUT = "timeout"  # no complete answer within the deadline
    NOT_JSON = "not-json"  # HTTP 200 whose body is not a JSON object
    CIRCUIT_OPEN = "circuit-open"  # not called: the account's webhook kept failing (processors/registrar/tenants)
    BUSY = "busy"  # not called: the account's concurrent calls stayed at their bound until the deadline


@dataclass(frozen=True, slots=True)
class WebhookVerdict:
    """How the registration webhook answered: an HTTP status and, for 200, its JSON object."""

    http_status: int | None = None
    body: dict[str, object] | None = None
    failure: WebhookFailure | None = None
    elapsed_ms: float = 0.0


@dataclass(frozen=True, slots=True)
class StoredBinding:
    """The parts of a cached `user:<aor>` record the cache short-circuit reads (SPEC 2.3)."""

    proxy: str | None
    expiry_time_ms: int | None


class _StoredRecord(msgspec.Struct):
    proxy: str | None = None
    expiryTime: float | None = None  # the jambonz JSON key


_record_decoder = msgspec.json.Decoder(_StoredRecord)


def parse_stored_binding(raw: bytes | str | None) -> StoredBinding | None:
    """The `user:<aor>` JSON as a StoredBinding; None when absent or unreadable."""
    if raw is None:
        return None
    try:
        record = _record_decoder.decode(raw)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    expiry = int(record.expiryTime) if record.expiryTime is not None else None
    return StoredBinding(proxy=record.proxy, expiry_time_ms=expiry)


@dataclass(frozen=True, slots=True)
class Facts:
    """Everything `decide()` may need, gathered so far (None: not gathered yet)."""

    binding: StoredBinding | None = None  # gathered up front for the batch; None: nothing cached
    account: Account | Absent | StoreFailure | None = None
    capacities: tuple[Capacity, ...] | StoreFailure | None = None
    device_count: int | StoreFailure | None = None
    verdict: WebhookVerdict | None = None
    client: Client | Absent | StoreFailure | None = None
    throttle: ThrottleState | None = None  # read up front for the batch; None: throttling off

    def having(self, **gathered: object) -> Facts:
        """A copy with more facts gathered."""
        values = {name: getattr(self, name) for name in _FACT_NAMES}
        values.update(gathered)
        return Facts(**values)  # type: ignore[arg-type]


_FACT_NAMES = tuple(field.name for field in dataclasses.fields(Facts))
