"""The jambonz record exists when the 200 OK leaves (the registrations projection inline with the decision).

REGISTER → 401 → REGISTER with digest over UDP with the default settings; in the instant the 200 OK is
received, `user:<aor>`, its TTL and its `active-user` score are read: no sleep, no retry. The same for an
unregister: the record is gone when its 200 arrives.
"""

from __future__ import annotations

import json
import secrets

from redis.asyncio import Redis

from events import user_key
from events.streams import ACTIVE_USER_KEY
from tests.e2e.jambonz import AuthWebhook
from tests.e2e.test_registrar_story import (  # noqa: F401 - fixtures, used by name
    StartSidecar,
    UdpUac,
    digest_authorization,
    hooked_realm,
    realm,
    register_request,
    sidecars,
    webhook,
)


async def read_record(redis: Redis, aor: str) -> tuple[bytes | None, int, float | None]:
    pipe = redis.pipeline(transaction=False)
    pipe.get(user_key(aor))
    pipe.ttl(user_key(aor))
    pipe.zscore(ACTIVE_USER_KEY, user_key(aor))
    value, ttl, score = await pipe.execute()
    return value, ttl, score


async def test_the_record_is_there_when_the_200_arrives_and_gone_when_the_unregisters_200_arrives(
    sidecars: StartSidecar,  # noqa: F811
    hooked_realm: str,  # noqa: F811
    webhook: AuthWebhook,  # noqa: F811
    redis: Redis,
) -> None:
    home = hooked_realm
    sidecar = await sidecars()  # the default settings: SIDECAR_PROJECTION_LINGER_MS and all
    aor = f"john@{home}"
    uac = await UdpUac.open()
    try:
        call_id = secrets.token_hex(8)
        challenge = await uac.transact(
            sidecar.udp_port, register_request(uac, "john", home, call_id=call_id, cseq=1, expires=3600)
        )
        assert challenge.status == 401
        authorization = digest_authorization(challenge.header("WWW-Authenticate") or "", "john", "1234", f"sip:{home}")
        ok = await uac.transact(
            sidecar.udp_port,
            register_request(uac, "john", home, call_id=call_id, cseq=2, expires=3600, authorization=authorization),
        )
        value, ttl, score = await read_record(redis, aor)  # the very next thing: no sleep, no retry
        assert ok.status == 200
        assert value is not None, "user:<aor> was missing when the 200 OK arrived"
        record = json.loads(value)
        assert record["contact"] == f"sip:john@127.0.0.1:{uac.port};transport=udp"
        assert record["proxy"] == f"sip:127.0.0.1:{uac.port}"
        assert 0 < ttl <= 45  # the webhook grants min(requested, 45)
        assert score == record["expiryTime"]

        unregister = await uac.transact(
            sidecar.udp_port,
            register_request(uac, "john", home, call_id=call_id, cseq=3, expires=0, authorization=authorization),
        )
        if unregister.status == 401:  # a fresh challenge for the unregister: answer it
            authorization = digest_authorization(
                unregister.header("WWW-Authenticate") or "", "john", "1234", f"sip:{home}"
            )
            unregister = await uac.transact(
                sidecar.udp_port,
                register_request(uac, "john", home, call_id=call_id, cseq=4, expires=0, authorization=authorization),
            )
        value, ttl, score = await read_record(redis, aor)
        assert unregister.status == 200
        assert (value, ttl, score) == (None, -2, None)
    finally:
        uac.close()
