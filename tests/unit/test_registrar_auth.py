"""Authorization parsing (SPEC 2.5), digest math (RFC 2617), client passwords (SPEC 2.7) and nonces."""

from __future__ import annotations

import base64
import hashlib
import json
from types import ModuleType

import msgspec
import pytest
from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from events import DigestCredentials, RegisterReceived
from processors.registrar.client_password import ClientPasswordCipher, ClientPasswordError, derive_key
from processors.registrar.decide import Situation, challenge
from processors.registrar.digest import compute_response, missing_fields, verify_response
from processors.registrar.nonce import NONCE_LENGTH, NonceCheck, NonceSigner

# --- Authorization parsing: the SIP parser's jambonz-compatible reader, then our mandatory check ---


def sip_digest() -> ModuleType:
    """The SIP layer's digest module (another package)."""
    import ingest.sip.digest

    return ingest.sip.digest


def parsed(header: str) -> DigestCredentials:
    fields = sip_digest().parse_digest_credentials_jambonz(header, require_mandatory=False)
    return msgspec.convert(fields, DigestCredentials)


FULL = (
    'Digest username="john", realm="jambonz.org", nonce="157590482938000", uri="sip:jambonz.org", '
    'response="941658f7cac3f357d4258ae52074c5e7", algorithm=MD5, cnonce="6b8b4567", qop=auth, nc=00000001'
)


def test_full_header_parses_every_field_and_verifies() -> None:
    creds = parsed(FULL)
    assert (creds.scheme, creds.username, creds.realm, creds.nonce, creds.uri) == (
        "digest",
        "john",
        "jambonz.org",
        "157590482938000",
        "sip:jambonz.org",
    )
    assert (creds.algorithm, creds.qop, creds.nc, creds.cnonce) == ("MD5", "auth", "00000001", "6b8b4567")
    assert missing_fields(creds) == ()
    assert verify_response(creds, "1234")
    assert not verify_response(creds, "12345")


def test_cnonce_is_not_taken_for_nonce() -> None:
    creds = parsed('Digest username="a", realm="r", cnonce="c1", uri="u", response="x"')
    assert creds.nonce is None and creds.cnonce == "c1"
    assert missing_fields(creds) == ("nonce",)


def test_unquoted_algorithm_last_is_lost_and_defaults_to_md5() -> None:
    creds = parsed('Digest username="a", realm="r", nonce="n", uri="u", response="x", algorithm=SHA-256')
    assert creds.algorithm == "MD5"


def test_nc_and_qop_last_have_a_fallback() -> None:
    assert (
        parsed('Digest username="a", realm="r", nonce="n", uri="u", response="x", nc=00000002').nc
        == "00000002"
    )
    assert parsed('Digest username="a", realm="r", nonce="n", uri="u", response="x", qop=auth').qop == "auth"


def test_quotes_are_optional() -> None:
    creds = parsed("Digest username=john, realm=jambonz.org, nonce=n1, uri=sip:x, response=abc, qop=auth")
    assert (creds.username, creds.realm, creds.nonce, creds.uri, creds.response) == (
        "john",
        "jambonz.org",
        "n1",
        "sip:x",
        "abc",
    )


@pytest.mark.parametrize(
    ("header", "missing"),
    [
        ('Digest realm="r", nonce="n", uri="u", response="x"', ("username",)),
        ('Digest username="a", nonce="n", uri="u", response="x"', ("realm",)),
        ('Digest username="a", realm="r", uri="u", response="x"', ("nonce",)),
        ('Digest username="a", realm="r", nonce="n", response="x"', ("uri",)),
        ('Digest username="a", realm="r", nonce="n", uri="u"', ("response",)),
        ('Digest username="", realm="r", nonce="n", uri="u", response="x"', ("username",)),
        ('Digest username="a", realm="r", nonce="n", uri="u", response=x', ("response",)),  # unquoted last
        ("Digest", ("username", "realm", "nonce", "uri", "response")),
    ],
)
def test_mandatory_fields(header: str, missing: tuple[str, ...]) -> None:
    assert missing_fields(parsed(header)) == missing


def test_mandatory_fields_without_the_parser() -> None:
    assert missing_fields(DigestCredentials()) == ("username", "realm", "nonce", "uri", "response")
    assert missing_fields(DigestCredentials(username="a", realm="r", nonce="n", uri="u", response="")) == (
        "response",
    )
    assert not verify_response(DigestCredentials(username="a"), "pw")


# --- digest math ------------------------------------------------------------------------


def md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


def test_rfc_2617_section_3_5_example() -> None:
    response = compute_response(
        username="Mufasa",
        realm="testrealm@host.com",
        password="Circle Of Life",
        method="GET",
        uri="/dir/index.html",
        nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093",
        qop="auth",
        nc="00000001",
        cnonce="0a4f113b",
    )
    assert response == "6629fae49393a05397450978507c4ef1"


def test_without_qop_is_rfc_2069() -> None:
    ha1, ha2 = md5("john:jambonz.org:1234"), md5("REGISTER:sip:jambonz.org")
    expected = md5(f"{ha1}:157590482938000:{ha2}")
    assert expected == "b3a37b217396d58c8f785e58dc15be49"  # Node's crypto, as digest-utils computes it
    assert (
        compute_response(
            username="john",
            realm="jambonz.org",
            password="1234",
            method="REGISTER",
            uri="sip:jambonz.org",
            nonce="157590482938000",
        )
        == expected
    )


def test_qop_without_cnonce_adds_only_qop() -> None:
    # jambonz adds nc:cnonce only when a cnonce is present, qop whenever present.
    ha1, ha2 = md5("a:r:p"), md5("REGISTER:u")
    assert compute_response(
        username="a", realm="r", password="p", method="REGISTER", uri="u", nonce="n", qop="auth", nc="1"
    ) == md5(f"{ha1}:n:auth:{ha2}")
    assert compute_response(
        username="a", realm="r", password="p", method="REGISTER", uri="u", nonce="n", cnonce="c", nc="1"
    ) == md5(f"{ha1}:n:1:c:{ha2}")


def test_verify_uses_the_clients_realm_and_register_method() -> None:
    creds = DigestCredentials(
        username="john",
        realm="jambonz.org",
        nonce="157590482938000",
        uri="sip:jambonz.org",
        response="941658f7cac3f357d4258ae52074c5e7",
        qop="auth",
        nc="00000001",
        cnonce="6b8b4567",
    )
    assert verify_response(creds, "1234")
    assert not verify_response(msgspec.structs.replace(creds, realm="other.org"), "1234")
    assert not verify_response(creds, "1234", method="INVITE")
    assert not verify_response(msgspec.structs.replace(creds, response=creds.response.upper()), "1234")  # type: ignore[union-attr]


# --- client passwords -------------------------------------------------------------------

SECRET = "foobarbazzle"
IV = bytes(range(16))
# Produced with Node's crypto exactly as the jambonz api-server encrypts (createCipheriv with the
# 32-character base64 key), for password "1234".
NODE_CBC = '{"iv":"000102030405060708090a0b0c0d0e0f","content":"4ae1244a0705051fbbb5121c0373b585"}'
NODE_CTR = '{"iv":"000102030405060708090a0b0c0d0e0f","content":"6080c4ca"}'


def test_key_derivation_is_32_base64_characters() -> None:
    expected = base64.b64encode(hashlib.sha256(SECRET.encode()).digest())[:32]
    assert derive_key(SECRET) == expected
    assert len(derive_key(SECRET)) == 32


def test_fixed_cbc_vector_from_cryptography_primitives() -> None:
    key = base64.b64encode(hashlib.sha256(SECRET.encode()).digest()).decode()[:32].encode()
    padder = padding.PKCS7(128).padder()
    data = padder.update(b"1234") + padder.finalize()
    encryptor = Cipher(algorithms.AES(key), modes.CBC(IV)).encryptor()
    content = encryptor.update(data) + encryptor.finalize()
    independent = json.dumps({"iv": IV.hex(), "content": content.hex()}, separators=(",", ":"))
    assert independent == NODE_CBC
    cipher = ClientPasswordCipher(SECRET)
    assert cipher.encrypt("1234", iv=IV) == NODE_CBC
    assert cipher.decrypt(NODE_CBC) == "1234"


def test_fixed_ctr_vector_from_cryptography_primitives() -> None:
    key = derive_key(SECRET)
    encryptor = Cipher(algorithms.AES(key), modes.CTR(IV)).encryptor()
    content = encryptor.update(b"1234") + encryptor.finalize()
    assert json.dumps({"iv": IV.hex(), "content": content.hex()}, separators=(",", ":")) == NODE_CTR
    cipher = ClientPasswordCipher(SECRET, legacy_crypto=True)
    assert cipher.encrypt("1234", iv=IV) == NODE_CTR
    assert cipher.decrypt(NODE_CTR) == "1234"


@pytest.mark.parametrize("legacy", [False, True])
@pytest.mark.parametrize("password", ["", "1234", "a" * 16, "pässwörd-ünicode", "x" * 200])
def test_encrypt_decrypt_round_trip(legacy: bool, password: str) -> None:
    cipher = ClientPasswordCipher(SECRET, legacy_crypto=legacy)
    stored = cipher.encrypt(password)
    assert json.loads(stored).keys() == {"iv", "content"}
    assert len(json.loads(stored)["iv"]) == 32
    assert cipher.decrypt(stored) == password
    assert cipher.encrypt(password) != stored  # a random IV each time


def test_wrong_mode_or_key_does_not_give_the_password() -> None:
    assert ClientPasswordCipher(SECRET, legacy_crypto=True).decrypt(NODE_CTR) == "1234"
    with pytest.raises(ClientPasswordError):
        ClientPasswordCipher("another secret").decrypt(NODE_CBC)  # bad padding
    with pytest.raises(ClientPasswordError):
        ClientPasswordCipher(SECRET).decrypt(NODE_CTR)  # 4 bytes is not a CBC block


@pytest.mark.parametrize(
    "stored",
    [
        "not json",
        '{"iv":"00","content":"4ae1244a0705051fbbb5121c0373b585"}',  # short IV
        '{"iv":"zz0102030405060708090a0b0c0d0e0f","content":"00"}',  # bad hex
        '{"content":"00"}',
        "null",
    ],
)
def test_malformed_stored_passwords_raise(stored: str) -> None:
    with pytest.raises(ClientPasswordError):
        ClientPasswordCipher(SECRET).decrypt(stored)


def test_repr_shows_no_key() -> None:
    cipher = ClientPasswordCipher(SECRET)
    assert SECRET not in repr(cipher) and derive_key(SECRET).decode() not in repr(cipher)


# --- nonces -----------------------------------------------------------------------------

NOW_S = 1_700_000_000
REALM = "jambonz.org"


@pytest.fixture
def signer() -> NonceSigner:
    return NonceSigner(SECRET, ttl_s=300)


def test_issued_nonce_format(signer: NonceSigner) -> None:
    nonce = signer.issue(REALM, NOW_S)
    assert len(nonce) == NONCE_LENGTH >= 15
    assert nonce[:10] == str(NOW_S)
    assert all(c in "0123456789abcdef" for c in nonce)
    assert signer.issue(REALM, NOW_S) == nonce  # stateless: the same second and realm, the same nonce


def test_verify_within_ttl(signer: NonceSigner) -> None:
    nonce = signer.issue(REALM, NOW_S)
    assert signer.verify(nonce, REALM, NOW_S) is NonceCheck.OK
    assert signer.verify(nonce, REALM, NOW_S + 300) is NonceCheck.OK
    assert signer.verify(nonce, REALM, NOW_S - 5) is NonceCheck.OK  # small clock skew between SBCs


def test_expired(signer: NonceSigner) -> None:
    nonce = signer.issue(REALM, NOW_S)
    assert signer.verify(nonce, REALM, NOW_S + 301) is NonceCheck.STALE
    assert signer.verify(nonce, REALM, NOW_S - 60) is NonceCheck.STALE  # from the future


def test_other_realm(signer: NonceSigner) -> None:
    assert signer.verify(signer.issue("other.org", NOW_S), REALM, NOW_S) is NonceCheck.STALE


def test_other_key_and_shared_key(signer: NonceSigner) -> None:
    assert signer.verify(NonceSigner("other").issue(REALM, NOW_S), REALM, NOW_S) is NonceCheck.STALE
    peer = NonceSigner(SECRET, ttl_s=300)  # another SBC with the same ENCRYPTION_SECRET
    assert peer.verify(signer.issue(REALM, NOW_S), REALM, NOW_S + 10) is NonceCheck.OK


@pytest.mark.parametrize("mutate", ["time", "mac", "truncate", "extend", "jambonz"])
def test_forged(signer: NonceSigner, mutate: str) -> None:
    nonce = signer.issue(REALM, NOW_S)
    forged = {
        "time": str(NOW_S + 1) + nonce[10:],  # re-dated, same MAC
        "mac": nonce[:-1] + ("0" if nonce[-1] != "0" else "1"),
        "truncate": nonce[:-1],
        "extend": nonce + "0",
        "jambonz": "157590482938000",
    }[mutate]
    assert signer.verify(forged, REALM, NOW_S + 1) is NonceCheck.STALE


@pytest.mark.parametrize(
    "garbage", ["", "x" * NONCE_LENGTH, "１７００００００００" + "0" * 16, "-170000000" + "0" * 16]
)
def test_malformed(signer: NonceSigner, garbage: str) -> None:
    assert signer.verify(garbage, REALM, NOW_S) is NonceCheck.STALE


def test_challenge_header_matches_the_sip_builder() -> None:
    # The registrar writes the challenge itself; it must equal the SIP layer's jambonz-identical builder.
    nonces = NonceSigner(SECRET)
    request = msgspec.convert(
        {
            "event_id": "e",
            "occurred_at": "2023-11-14T22:13:20Z",
            "correlation_id": "c",
            "reply_to": "i",
            "call_id": "k",
            "cseq": 1,
            "source_ip": "1.2.3.4",
            "source_port": 5060,
            "transport": "udp",
            "via_transport": "udp",
            "sbc_address": "udp/5.6.7.8:5060",
            "request_uri": f"sip:{REALM}",
            "request_uri_host": REALM,
            "to_uri": f"sip:a@{REALM}",
            "aor_user": "a",
            "aor_host": REALM,
        },
        RegisterReceived,
    )
    for stale in (False, True):
        decision = challenge(Situation(request, NOW_S * 1000, "1-0"), nonces, stale=stale)
        expected = sip_digest().build_www_authenticate(REALM, nonces.issue(REALM, NOW_S), stale=stale)
        assert decision.reply.headers == [("WWW-Authenticate", expected)]
