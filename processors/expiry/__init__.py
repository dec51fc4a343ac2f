"""The expiry processor: RegistrationExpired when a binding lapses without refresh."""

from processors.expiry.sweeper import ExpirySweeper, build

__all__ = ["ExpirySweeper", "build"]
