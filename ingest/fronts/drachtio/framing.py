"""Length-prefixed frames of the drachtio control connection (DRACHTIO.md section 2).

A frame is `<decimal byte count>#<payload>`, with no separator between frames. The count is of
UTF-8 *bytes*, never characters. The server reads app frames into a fixed 12,228-byte buffer and
hangs on anything bigger, so outgoing frames are refused above `MAX_OUTGOING_FRAME_BYTES`;
incoming frames may be any length.
"""

from __future__ import annotations

MAX_OUTGOING_FRAME_BYTES = 12_000
"""Largest whole frame (digits, `#` and payload) we send; the server's buffer is 12,228 bytes."""

_MAX_LENGTH_DIGITS = 10  # nobody sends a 10 GB frame: more digits means a corrupt stream


class FrameFormatError(ValueError):
    """The peer sent a length prefix that is not a plain decimal number: the stream cannot be trusted past it.

    `intact` holds the payloads of the same `feed` completed before the bad prefix, minus the last
    one (`discarded` says whether there was one). A frame cut short by the sender is what makes the
    next prefix bad: its length swallowed the start of what followed, so the payload read with that
    length is not a message; the ones before it are.
    """

    def __init__(self, message: str, intact: list[bytes] | None = None, *, discarded: bool = False) -> None:
        super().__init__(message)
        self.intact: list[bytes] = intact if intact is not None else []
        self.discarded = discarded


class FrameTooLargeError(ValueError):
    """An outgoing frame would not fit the drachtio server's input buffer."""

    def __init__(self, frame_bytes: int, limit_bytes: int) -> None:
        super().__init__(
            f"drachtio frame of {frame_bytes} bytes refused: the server cannot take frames over "
            f"{limit_bytes} bytes (its input buffer is 12,228 bytes)"
        )
        self.frame_bytes = frame_bytes
        self.limit_bytes = limit_bytes


def encode_frame(payload: bytes, *, limit_bytes: int = MAX_OUTGOING_FRAME_BYTES) -> bytes:
    """Prefix `payload` with its byte count; raise FrameTooLargeError if the frame exceeds the limit."""
    frame = b"%d#%b" % (len(payload), payload)
    if len(frame) > limit_bytes:
        raise FrameTooLargeError(len(frame), limit_bytes)
    return frame


class FrameDecoder:
    """Incremental decoder: feed it bytes as they arrive, get back every payload completed so far.

    Frames may arrive joined in one read or split anywhere, including inside the length digits.
    """

    __slots__ = ("_buffer", "_expected")

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._expected: int | None = None  # payload length of the frame being read, once known

    @property
    def buffered_bytes(self) -> int:
        return len(self._buffer)

    def feed(self, data: bytes) -> list[bytes]:
        """Add `data`; return the complete payloads, in order.

        A bad prefix raises FrameFormatError carrying the payloads before it that can be trusted;
        the decoder is of no further use then (the stream has lost its frame boundaries).
        """
        self._buffer += data
        payloads: list[bytes] = []
        while True:
            try:
                if self._expected is None and not self._read_length():
                    return payloads
            except FrameFormatError as exc:
                raise FrameFormatError(str(exc), payloads[:-1], discarded=bool(payloads)) from None
            assert self._expected is not None
            if len(self._buffer) < self._expected:
                return payloads
            payloads.append(bytes(self._buffer[: self._expected]))
            del self._buffer[: self._expected]
            self._expected = None

    def _read_length(self) -> bool:
        """Consume `<digits>#` from the buffer if it is all there; say whether it was."""
        hash_at = self._buffer.find(b"#", 0, _MAX_LENGTH_DIGITS + 1)
        if hash_at < 0:
            head = bytes(self._buffer[: _MAX_LENGTH_DIGITS + 1])
            if len(head) > _MAX_LENGTH_DIGITS or not _all_digits(head):
                raise FrameFormatError(f"bad drachtio length prefix {head[:16]!r}")
            return False
        digits = bytes(self._buffer[:hash_at])
        if not digits or not _all_digits(digits):
            raise FrameFormatError(f"bad drachtio length prefix {digits[:16]!r}")
        self._expected = int(digits)
        del self._buffer[: hash_at + 1]
        return True


def _all_digits(data: bytes) -> bool:
    return all(0x30 <= byte <= 0x39 for byte in data)
