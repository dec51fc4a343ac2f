"""The errors the drachtio front raises (besides FrameTooLargeError from framing)."""

from __future__ import annotations


class DrachtioError(Exception):
    """Base of the errors the drachtio front raises."""


class DrachtioConnectionError(DrachtioError, ConnectionError):
    """No authenticated connection to drachtio, or the one a message belonged to was lost."""


class DrachtioCommandError(DrachtioError):
    """drachtio answered one of our messages with NO/NOK; `reason` is its text (`invalid request-uri`)."""

    def __init__(self, command: str, status: str, reason: str) -> None:
        super().__init__(f"drachtio refused {command}: {status} {reason}".rstrip())
        self.command = command
        self.status = status
        self.reason = reason


class DrachtioAuthenticationError(DrachtioCommandError):
    """drachtio refused the shared secret: a configuration error, retried with backoff anyway."""
