"""Events of the registration path: requests from the SIP edge and the registrar's facts."""

from __future__ import annotations

import msgspec

from events.envelope import Event


class DigestCredentials(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """The parsed fields of an `Authorization: Digest ...` header (SPEC 2.5)."""

    scheme: str = "digest"
    username: str | None = None
    realm: str | None = None
    nonce: str | None = None
    uri: str | None = None
    algorithm: str = "MD5"
    response: str | None = None
    qop: str | None = None
    nc: str | None = None
    cnonce: str | None = None
    opaque: str | None = None


class RequestSummary(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """What the story of an AOR tells of the REGISTER a decision answers (no secrets): carried by the
    decision's fact, so the history needs no request stream (which is a work queue, trimmed once read)."""

    at: str  # the request's occurred_at, ISO 8601
    transport: str
    expires: int | None = None
    credentials: bool = False  # whether it carried an Authorization header
    username: str | None = None  # the credentials' username
    user_agent: str | None = None
    sbc: str | None = None  # the ingest that received it (its id), so a story across SBCs names each
    sbc_address: str | None = None  # that SBC's SIP address, as it advertises it (`sbcAddress`)


class RegisterReceived(Event, frozen=True, kw_only=True):
    """A REGISTER reached the SIP edge; everything a processor needs, already parsed."""

    TYPE = "RegisterReceived"

    reply_to: str
    call_id: str
    cseq: int
    source_ip: str
    source_port: int
    transport: str  # how it arrived: udp, tcp, tls, ws, wss
    via_transport: str | None  # top Via sent-protocol, lower-case
    sbc_address: str
    private_sbc_address: str | None = None
    request_uri: str
    request_uri_host: str | None  # None when the Request-URI has no host or does not parse
    to_uri: str
    aor_user: str | None = None
    aor_host: str | None = None  # None when the To-URI does not parse
    contact: str | None = None  # the first Contact header's text, as sent
    contact_uri: str | None = None  # the URI inside it, or "*"
    expires: int | None = None  # first Contact's expires parameter, else the Expires header
    # The parsed Authorization header, sealed (AES-GCM, a key from ENCRYPTION_SECRET: runtime/sealed.py) so that no
    # digest response sits readable in Redis or its AOF; `authorization` holds it only once opened in a process
    # (and in entries written before sealing existed).
    authorization: DigestCredentials | None = None
    sealed_authorization: str | None = None
    headers: dict[str, str] = {}  # every header but Authorization, lower-case names
    user_agent: str | None = None
    # Epoch ms after which nobody waits for the answer (the ingest's reply deadline, never past SIP Timer F).
    # None in entries written before deadlines existed: such a request is decided whenever it is read.
    deadline_ms: int | None = None

    @property
    def aor(self) -> str | None:
        """`<user>@<host>` of the To-URI, as the decisions about it name it; jambonz writes `undefined@host`
        when there is no user. None when the To-URI does not parse."""
        if self.aor_host is None:
            return None
        return f"{self.aor_user if self.aor_user is not None else 'undefined'}@{self.aor_host}"


class RegisterChallenged(Event, frozen=True, kw_only=True):
    TYPE = "RegisterChallenged"

    aor: str
    realm: str
    nonce: str
    stale: bool = False
    source_ip: str
    source_port: int
    call_id: str
    request: RequestSummary | None = None  # the REGISTER this answers


class RegisterRejected(Event, frozen=True, kw_only=True):
    """A REGISTER got a final non-2xx answer; `cause` says why in plain words."""

    TYPE = "RegisterRejected"

    aor: str | None
    status: int
    reason: str  # the SIP reason phrase sent
    cause: str
    x_reason: str | None = None
    source_ip: str
    source_port: int
    call_id: str
    account_sid: str | None = None
    request: RequestSummary | None = None  # the REGISTER this answers


class RegistrationGranted(Event, frozen=True, kw_only=True):
    """A binding was authenticated and stored: the whole `user:<aor>` record and its timing."""

    TYPE = "RegistrationGranted"

    aor: str
    contact: str
    sbc_address: str
    private_sbc_address: str | None = None
    protocol: str | None = None
    proxy: str
    call_hook: str | dict[str, object] | None = None
    call_status_hook: str | dict[str, object] | None = None
    allow_direct_app_calling: bool | int = False
    allow_direct_queue_calling: bool | int = False
    allow_direct_user_calling: bool | int = False
    granted_expires_s: int
    advertised_expires_s: int
    expiry_time_ms: int
    account_sid: str | None = None
    username: str | None = None
    source_ip: str
    source_port: int
    call_id: str
    request: RequestSummary | None = None  # the REGISTER this answers


class RegistrationRefreshed(Event, frozen=True, kw_only=True):
    """A REGISTER from the bound source was answered from the cached binding, unauthenticated."""

    TYPE = "RegistrationRefreshed"

    aor: str
    advertised_expires_s: int
    expiry_time_ms: int
    source_ip: str
    source_port: int
    call_id: str
    contact: str | None = None  # the Contact of the REGISTER, for the history's runs of identical refreshes
    request: RequestSummary | None = None  # the REGISTER this answers


class RegistrationRemoved(Event, frozen=True, kw_only=True):
    TYPE = "RegistrationRemoved"

    aor: str
    account_sid: str | None = None
    username: str | None = None
    source_ip: str
    source_port: int
    call_id: str
    request: RequestSummary | None = None  # the REGISTER this answers


class RegistrationExpired(Event, frozen=True, kw_only=True):
    """A binding lapsed without refresh."""

    TYPE = "RegistrationExpired"

    aor: str
    expiry_time_ms: int
    granted_event_id: str


class RequestExpired(Event, frozen=True, kw_only=True):
    """A request was read, or decided, after its deadline: nobody waited for its answer, so nothing was decided.

    Recorded instead of a challenge, a webhook call or a grant when a request is claimed late (its
    processor died), queued behind an outage, or answered by its webhook too late; the phone got its
    answer (500) from the ingest, or none at all, and registers again.
    """

    TYPE = "RequestExpired"

    request_type: str  # RegisterReceived, OptionsReceived
    aor: str | None = None
    deadline_ms: int
    late_ms: int  # how long after the deadline it was read, or decided
    source_ip: str
    source_port: int
    call_id: str
    request: RequestSummary | None = None  # the REGISTER it was


class DeviceLimitReached(Event, frozen=True, kw_only=True):
    """Hosted mode: an account is at its registered-device limit (an InfluxDB alert)."""

    TYPE = "DeviceLimitReached"

    account_sid: str
    limit: int
    service_provider_sid: str | None = None  # an alert tag (SPEC 5.3)


class WebhookFailed(Event, frozen=True, kw_only=True):
    """The registration webhook answered non-200 (`status`) or could not be reached (`status` None)."""

    TYPE = "WebhookFailed"

    account_sid: str
    url: str
    status: int | None = None
    service_provider_sid: str | None = None  # an alert tag (SPEC 5.3)


class OptionsReceived(Event, frozen=True, kw_only=True):
    """An OPTIONS carrying X-FS-Status or X-RTP-Status (a feature/RTP server heartbeat)."""

    TYPE = "OptionsReceived"

    reply_to: str
    call_id: str
    source_ip: str
    source_port: int
    transport: str
    fs_status: str | None = None
    fs_service_url: str | None = None
    rtp_status: str | None = None
    deadline_ms: int | None = None  # as RegisterReceived's


class ReplyIssued(Event, frozen=True, kw_only=True):
    """The answer a processor decided for a SIP request, for the ingest instance holding it."""

    TYPE = "ReplyIssued"

    status: int
    reason: str
    headers: list[tuple[str, str]] = []


class BlockStarted(Event, frozen=True, kw_only=True):
    """Too many failed authentications: a source IP or an AOR is refused for a while (brute-force throttling).

    One fact per block; the blocked attempts that follow record nothing. `aor` and the source are those of
    the attempt that brought the failures to their limit.
    """

    TYPE = "BlockStarted"

    subject_kind: str  # "ip" or "aor"
    subject: str  # the IP address or the AOR blocked
    failures: int  # failed authentications within the window
    window_s: int
    block_s: int  # how long the block lasts
    until_ms: int
    strike: int  # 1 for a first block; each block within a day doubles the next one
    aor: str | None = None
    account_sid: str | None = None
    service_provider_sid: str | None = None  # an alert tag (SPEC 5.3)
    source_ip: str
    source_port: int
    call_id: str
