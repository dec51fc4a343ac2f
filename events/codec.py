"""The strict codec between events and stream entries (`type`, `v`, `data`)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import msgspec

from events.envelope import Event

Upcaster = Callable[[dict[str, Any]], dict[str, Any]]

FIELD_TYPE = b"type"
FIELD_VERSION = b"v"
FIELD_DATA = b"data"


class EventDecodeError(ValueError):
    """A stream entry that is not a valid event of a known type and version."""


class EventCodec:
    """Encodes events to stream fields and decodes them back, strictly.

    Unknown types, missing fields and wrong field types raise `EventDecodeError`. An entry
    written with an older schema version is passed through the upcasters registered for its
    type, one version step at a time, before it is decoded.
    """

    def __init__(
        self,
        event_types: Iterable[type[Event]],
        upcasters: Mapping[tuple[str, int], Upcaster] | None = None,
    ) -> None:
        self._types: dict[str, type[Event]] = {}
        self._headers: dict[type[Event], tuple[bytes, bytes]] = {}  # the type and v fields, by class
        self._current: dict[tuple[bytes, bytes], msgspec.json.Decoder[Any]] = {}  # (type, v) fields -> decoder
        self._decoders: dict[str, msgspec.json.Decoder[Any]] = {}
        for cls in event_types:
            if not cls.TYPE:
                raise ValueError(f"{cls.__name__} has no TYPE")
            if cls.TYPE in self._types:
                raise ValueError(f"duplicate event type {cls.TYPE!r}")
            self._types[cls.TYPE] = cls
            self._headers[cls] = (cls.TYPE.encode(), str(cls.VERSION).encode())
            self._decoders[cls.TYPE] = msgspec.json.Decoder(cls)
            self._current[self._headers[cls]] = self._decoders[cls.TYPE]
        self._upcasters = dict(upcasters or {})
        self._encoder = msgspec.json.Encoder()
        self._dict_decoder = msgspec.json.Decoder(dict[str, Any])

    def encode(self, event: Event) -> dict[bytes, bytes]:
        type_name, version, data = self.encode_fields(event)
        return {FIELD_TYPE: type_name, FIELD_VERSION: version, FIELD_DATA: data}

    def encode_fields(self, event: Event) -> tuple[bytes, bytes, bytes]:
        """The values of the `type`, `v` and `data` fields of the entry for `event`."""
        cls = type(event)
        header = self._headers.get(cls)
        if header is None:
            raise ValueError(f"event type {cls.TYPE!r} is not registered")
        return header[0], header[1], self._encoder.encode(event)

    def decode(self, fields: Mapping[bytes, bytes]) -> Event:
        current = self._current.get((fields.get(FIELD_TYPE), fields.get(FIELD_VERSION)))  # type: ignore[arg-type]
        if current is not None:  # the usual entry: a known type at its current version
            try:
                return current.decode(fields[FIELD_DATA])
            except KeyError as exc:
                raise EventDecodeError(f"entry is not an event: {exc!r}") from exc
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                raise EventDecodeError(f"{fields[FIELD_TYPE].decode()} v{int(fields[FIELD_VERSION])}: {exc}") from exc
        try:
            type_name = fields[FIELD_TYPE].decode()
            version = int(fields[FIELD_VERSION])
            data = fields[FIELD_DATA]
        except (KeyError, ValueError, UnicodeDecodeError) as exc:
            raise EventDecodeError(f"entry is not an event: {exc!r}") from exc
        cls = self._types.get(type_name)
        if cls is None:
            raise EventDecodeError(f"unknown event type {type_name!r}")
        try:
            if version == cls.VERSION:
                return self._decoders[type_name].decode(data)
            if version > cls.VERSION or version < 1:
                raise EventDecodeError(f"{type_name} v{version} is not a known schema version")
            raw = self._dict_decoder.decode(data)
            for step in range(version, cls.VERSION):
                upcast = self._upcasters.get((type_name, step))
                if upcast is None:
                    raise EventDecodeError(f"no upcaster for {type_name} v{step}")
                raw = upcast(raw)
            return msgspec.convert(raw, cls)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise EventDecodeError(f"{type_name} v{version}: {exc}") from exc
