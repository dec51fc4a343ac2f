"""The expiry processor: RegistrationExpired when a binding lapses without refresh."""

from processors.expiry.sweeper import ExpirySweeper

__all__ = ["ExpirySweeper"]
