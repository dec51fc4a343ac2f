"""Outbound registration to carriers (SPEC 4.1-4.5): leader lock, reconciliation, REGISTER commands, answers."""

from processors.regbot.decide import GatewayState, Policy, decide_answer, decode_state, encode_state, is_due
from processors.regbot.leader import LeaderLock
from processors.regbot.shell import Regbot, RegbotAnswers, policy_of
from processors.regbot.targets import Carrier, Gateway, Plan, Target, plan, target_of

__all__ = [
    "Carrier",
    "Gateway",
    "GatewayState",
    "LeaderLock",
    "Plan",
    "Policy",
    "Regbot",
    "RegbotAnswers",
    "Target",
    "decide_answer",
    "decode_state",
    "encode_state",
    "is_due",
    "plan",
    "policy_of",
    "target_of",
]
