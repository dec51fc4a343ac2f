"""OPTIONS ping of carrier gateways (SPEC 4.6): ping rounds as commands, the edges' answers as facts."""

from processors.pinger.decide import PeerAnswer, PingPolicy, PingTarget, decide_answer, plan_pings, target_of
from processors.pinger.shell import PingAnswers, Pinger, ping_policy_of

__all__ = [
    "PeerAnswer",
    "PingAnswers",
    "PingPolicy",
    "PingTarget",
    "Pinger",
    "decide_answer",
    "ping_policy_of",
    "plan_pings",
    "target_of",
]
