"""SIP messages as real clients and servers send them, for the parser tests (bytes, CRLF line ends)."""

from __future__ import annotations


def _message(*lines: str, body: str = "") -> bytes:
    return ("\r\n".join(lines) + "\r\n\r\n" + body).encode()


# sipp's uac REGISTER after a 401, as in jambonz's uac-register-auth-success.xml: the [authentication]
# keyword writes the Digest parameters without spaces, with algorithm last and unquoted.
SIPP_REGISTER = _message(
    "REGISTER sip:jambonz.org SIP/2.0",
    "Via: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK-2184-1-3",
    "From: <sip:john@jambonz.org>;tag=2184SIPpTag001",
    "To: <sip:john@jambonz.org>",
    "Call-ID: 1-2184@127.0.0.1",
    "CSeq: 2 REGISTER",
    "Contact: <sip:john@127.0.0.1:5061>;expires=3600",
    "Max-Forwards: 70",
    "Expires: 3600",
    'Authorization: Digest username="john",realm="jambonz.org",cnonce="6b8b4567",nc=00000001,qop=auth,'
    'uri="sip:jambonz.org",nonce="157590482938000",response="a4f1ba2b3c5d8e9f00112233445566ab",algorithm=MD5',
    "Subject: Performance Test",
    "User-Agent: SIPp",
    "Content-Length: 0",
)

# A desktop softphone on IPv6 using compact header names.
SOFTPHONE_COMPACT_REGISTER = _message(
    "REGISTER sip:jambonz.org SIP/2.0",
    "v: SIP/2.0/UDP [2001:db8::10]:5060;branch=z9hG4bK.Xa7CnWq2e;rport",
    'f: "Alice Liddell" <sip:alice@jambonz.org>;tag=a73kszlfl',
    "t: <sip:alice@jambonz.org>",
    "i: 8b1c2e1f-3c2a-4f4e-9d1a-2b3c4d5e6f70",
    "CSeq: 20 REGISTER",
    "m: <sip:alice@[2001:db8::10]:5060;transport=udp>;expires=600;"
    '+sip.instance="<urn:uuid:0d9a2c44-ffee-4b3c-9e55-0123456789ab>"',
    "Max-Forwards: 70",
    "k: outbound, path",
    "User-Agent: Linphone/5.2.0 (belle-sip/5.2.0)",
    "l: 0",
)

# SIP.js over a secure WebSocket (RFC 7118): a made-up .invalid host in Via and Contact.
WEBSOCKET_REGISTER = _message(
    "REGISTER sip:jambonz.org SIP/2.0",
    "Via: SIP/2.0/WSS df7jal23ls0d.invalid;branch=z9hG4bK6813977",
    "To: <sip:bob@jambonz.org>",
    'From: "Bob" <sip:bob@jambonz.org>;tag=hbnqt5d4ue',
    "CSeq: 3 REGISTER",
    "Call-ID: oq4g0q5e8rsv0d3rh0a3td",
    "Max-Forwards: 70",
    'Authorization: Digest algorithm=MD5, username="bob", realm="jambonz.org", nonce="167403920349200", '
    'uri="sip:jambonz.org", response="3c2b1a09f8e7d6c5b4a3928170f6e5d4", qop=auth, cnonce="bs7kfjkhr4s3", '
    "nc=00000001",
    "Contact: <sip:k2b4v3vd@df7jal23ls0d.invalid;transport=ws>;+sip.ice;reg-id=1;"
    '+sip.instance="<urn:uuid:5d0e5e5c-3a87-4bd4-a8bd-4ae42dd6a1f3>";expires=600',
    "Expires: 600",
    "Allow: ACK,CANCEL,INVITE,MESSAGE,BYE,OPTIONS,INFO,NOTIFY,REFER",
    "Supported: path,gruu,outbound",
    "User-Agent: SIP.js/0.21.2",
    "Content-Length: 0",
)

# A jambonz feature server's heartbeat OPTIONS (SPEC.md 3).
FEATURE_SERVER_OPTIONS = _message(
    "OPTIONS sip:10.0.0.5:5060 SIP/2.0",
    "Via: SIP/2.0/UDP 10.0.0.7:5060;rport;branch=z9hG4bKQ3cgjHt3ZgB0p",
    "Max-Forwards: 70",
    "From: <sip:10.0.0.7:5060>;tag=1Fv0SNj1g1BFm",
    "To: <sip:10.0.0.5:5060>",
    "Call-ID: 5d1c2f5e-1111-2222-3333-444455556666",
    "CSeq: 12345 OPTIONS",
    "Contact: <sip:10.0.0.7:5060>",
    "X-FS-Status: open",
    "X-FS-Calls: 0",
    "X-FS-ServiceUrl: http://10.0.0.7:3000",
    "Content-Length: 0",
)

# jambonz's challenge to the first sipp REGISTER, as sent through drachtio.
UNAUTHORIZED_401 = _message(
    "SIP/2.0 401 Unauthorized",
    "Via: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK-2184-1-0;received=127.0.0.1;rport=5061",
    "From: <sip:john@jambonz.org>;tag=2184SIPpTag001",
    "To: <sip:john@jambonz.org>;tag=aprqngfrt",
    "Call-ID: 1-2184@127.0.0.1",
    "CSeq: 1 REGISTER",
    'WWW-Authenticate: Digest realm="jambonz.org", algorithm=MD5, qop="auth", nonce="157590482938000"',
    "Server: drachtio 0.8.24",
    "Content-Length: 0",
)

# RFC 4475 3.1.1.1-style folding: header values continued on lines that start with SP or HTAB.
FOLDED_REGISTER = _message(
    "REGISTER sip:jambonz.org SIP/2.0",
    "Via: SIP/2.0/TCP 192.0.2.4:5060",
    "  ;branch=z9hG4bKnashds7",
    "From: <sip:carol@jambonz.org>",
    "\t;tag=9fxced76sl",
    "To: <sip:carol@jambonz.org>",
    "Call-ID: 0ha0isndaksdj@192.0.2.4",
    "CSeq: 8",
    "   REGISTER",
    "Subject: I know you're there,",
    "     pick up the phone",
    "\tand talk to me!",
    "Contact: <sip:carol@192.0.2.4:5060;transport=tcp>",
    "Expires: 300",
    "Content-Length: 0",
)

# A MESSAGE with a body and compact Content-Type; two Via fields, one holding two values.
MESSAGE_WITH_BODY = _message(
    "MESSAGE sip:bob@jambonz.org SIP/2.0",
    "Via: SIP/2.0/UDP 203.0.113.9:5060;branch=z9hG4bK776sgd, SIP/2.0/TCP 198.51.100.1:5070;branch=z9hG4bKa",
    "Via: SIP/2.0/UDP 192.0.2.55;branch=z9hG4bK99",
    "From: <sip:alice@jambonz.org>;tag=49583",
    "To: <sip:bob@jambonz.org>",
    "Call-ID: asd88asd77a@1.2.3.4",
    "CSeq: 1 MESSAGE",
    "c: text/plain",
    "Content-Length: 18",
    body="Watson, come here.",
)
