"""Cutting a TCP/TLS byte stream into SIP messages by Content-Length (RFC 3261 18.3, RFC 5626 4.4.1)."""

from __future__ import annotations

import re

from ingest.sip.errors import SipParseError
from ingest.sip.parser import DEFAULT_MAX_MESSAGE_BYTES, find_header_end

__all__ = ["KEEPALIVE_PING", "KEEPALIVE_PONG", "KeepAlivePing", "StreamFramer"]

KEEPALIVE_PONG = b"\r\n"  # the answer to a double-CRLF ping (RFC 5626 4.4.1)
_PING = b"\r\n\r\n"
_CONTENT_LENGTH = re.compile(rb"^(?:content-length|l)[ \t]*:([^\r\n]*)", re.IGNORECASE | re.MULTILINE)


class KeepAlivePing:
    """A double-CRLF keep-alive ping between messages; answer it with :data:`KEEPALIVE_PONG`."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "KEEPALIVE_PING"


KEEPALIVE_PING = KeepAlivePing()


class StreamFramer:
    """Fed the bytes of one connection, returns each complete message's bytes and each keep-alive ping.

    Content-Length is required on streams: a message without it, with a bad or conflicting value, or larger
    than ``max_message_bytes`` raises :class:`SipParseError`; the framer is then broken (every later call
    raises) and the connection should be closed. A frame that is well delimited but malformed inside is
    still returned: :func:`ingest.sip.parser.parse_message` reports it, and the connection can go on.
    CR/LF bytes between messages are skipped; a CRLF CRLF there is reported as :data:`KEEPALIVE_PING`.
    """

    __slots__ = ("_buffer", "_max_message_bytes", "_scanned", "_frame_bytes", "_broken")

    def __init__(self, *, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> None:
        self._buffer = bytearray()
        self._max_message_bytes = max_message_bytes
        self._scanned = 0  # bytes of the pending message already searched for the blank line
        self._frame_bytes = 0  # size of the pending message once its header is complete, else 0
        self._broken = False

    @property
    def buffered_bytes(self) -> int:
        """Bytes received and not yet returned (a partial message or partial ping)."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[bytes | KeepAlivePing]:
        """Add received bytes; return what they complete, in stream order."""
        if self._broken:
            raise SipParseError("stream framing failed earlier")
        buffer = self._buffer
        buffer += data
        frames: list[bytes | KeepAlivePing] = []
        pos = 0
        try:
            while pos < len(buffer):
                if self._frame_bytes:
                    end = pos + self._frame_bytes
                    if end > len(buffer):
                        break
                    frames.append(bytes(buffer[pos:end]))
                    pos, self._frame_bytes, self._scanned = end, 0, 0
                    continue
                if buffer[pos] in b"\r\n":
                    if buffer.startswith(_PING, pos):
                        frames.append(KEEPALIVE_PING)
                        pos += 4
                    elif len(buffer) - pos < 4 and _PING.startswith(buffer[pos:]):
                        break  # maybe the first bytes of a ping
                    else:
                        pos += 1
                    continue
                if not self._frame_header(pos):
                    break
        except SipParseError:
            self._broken = True
            buffer.clear()
            raise
        del buffer[:pos]
        return frames

    def _frame_header(self, pos: int) -> bool:
        """Measure the message starting at ``pos``; False while its header section is incomplete."""
        buffer = self._buffer
        head_end, body_start = find_header_end(buffer, pos + max(0, self._scanned - 2))
        if head_end < 0:
            self._scanned = len(buffer) - pos
            if self._scanned > self._max_message_bytes:
                raise SipParseError(f"header section larger than {self._max_message_bytes} bytes")
            return False
        values = {value.strip(b" \t") for value in _CONTENT_LENGTH.findall(buffer, pos, head_end)}
        if not values:
            raise SipParseError("no Content-Length on a stream transport")
        if len(values) > 1:
            raise SipParseError("conflicting Content-Length headers")
        value = values.pop()
        if not (0 < len(value) <= 10 and value.isdigit()):
            raise SipParseError("Content-Length is not a number")
        self._frame_bytes = body_start - pos + int(value)
        if self._frame_bytes > self._max_message_bytes:
            raise SipParseError(f"message larger than {self._max_message_bytes} bytes")
        return True
