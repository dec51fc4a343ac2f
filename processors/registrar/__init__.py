"""The registrar: REGISTER requests in, registration facts and SIP replies out (SPEC 2)."""

from processors.registrar.decide import Decision, Need, RegistrarPolicy, decide
from processors.registrar.facts import Facts
from processors.registrar.shell import Registrar, RegistrarConfig

__all__ = ["Decision", "Facts", "Need", "Registrar", "RegistrarConfig", "RegistrarPolicy", "decide"]
