"""The service's error tree: configuration, decoding and transient store/webhook faults."""

from __future__ import annotations


class SidecarError(Exception):
    """Base of every error the service raises on purpose."""


class ConfigError(SidecarError):
    """A missing or bad setting; startup stops with exit status 2 and names the variable."""

    def __init__(self, variable: str, problem: str) -> None:
        super().__init__(f"{variable} {problem}")
        self.variable = variable
        self.problem = problem


class TransientError(SidecarError):
    """A fault that may pass if the work is tried again (store or network trouble)."""


class StoreUnavailable(TransientError):
    """Redis or MySQL could not be reached or answered with an error."""


class NotStored(StoreUnavailable):
    """An append that surely did not reach its stream (no connection could be made, or a Redis Cluster refused it
    before running it): it may be sent again without being stored twice."""
