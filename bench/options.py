"""The command line of `bench/run`.

bench/run                       the ladders, all roles in one process
bench/run --split --processors 2
bench/run --smoke               one tiny step of each kind (CI)
bench/run --profile 2400        also py-spy the service during the 2400/s registration step
bench/run --webhook-delay-ms 250          the ladders with a customer webhook across the internet
bench/run --isolation           another account's webhook hangs: account A's latency, heartbeats
bench/run --soak                5,000 phones register, then refresh 20 rounds: Redis bytes per phone
"""

from __future__ import annotations

import argparse
from pathlib import Path

from bench.infrastructure import REPO
from bench.sidecar import SIDECAR

REGISTER_RATES = (200, 400, 800, 1200, 1600, 2000, 2400, 3200, 4800, 6400)
OPTIONS_RATES = (1000, 2000, 5000, 10000, 20000, 30000, 40000, 50000, 60000)


def rates(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"want a comma list of rates, got {text!r}") from None
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"want positive rates, got {text!r}")
    return values


def non_negative(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"want a whole number ≥ 0, got {text!r}")
    return int(text)


def positive(text: str) -> int:
    value = non_negative(text)
    if value == 0:
        raise argparse.ArgumentTypeError("want a number > 0")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bench/run", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--split", action="store_true", help="run ingest, processors and projections as separate processes"
    )
    parser.add_argument("--processors", type=int, default=2, help="processor processes with --split (2)")
    parser.add_argument(
        "--ingests", type=int, default=1, help="ingest processes with --split, sharing the SIP port by SO_REUSEPORT (1)"
    )
    parser.add_argument("--smoke", action="store_true", help="one tiny step of each kind; exit 1 unless both hold")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of load per step (10; at most 25)")
    parser.add_argument("--register-rates", type=rates, default=REGISTER_RATES, help="comma list, registrations/s")
    parser.add_argument("--options-rates", type=rates, default=OPTIONS_RATES, help="comma list, OPTIONS/s")
    parser.add_argument("--probe-rate", type=float, default=20.0, help="probe transactions per second (20)")
    parser.add_argument(
        "--webhook-delay-ms",
        type=non_negative,
        default=0,
        metavar="N",
        help="the bench webhook answers each call N ms after it arrived (0); the probe's latency includes it",
    )
    parser.add_argument(
        "--all-steps", action="store_true", help="run every rate of a ladder, also after a step that does not hold"
    )
    isolation = parser.add_argument_group(
        "tenant isolation", "--isolation runs this scenario instead of the ladders (see bench/isolation.py)"
    )
    isolation.add_argument(
        "--isolation",
        action="store_true",
        help="account A under load, with and without account B's webhook hanging; times A and heartbeats",
    )
    isolation.add_argument("--isolation-rate", type=positive, default=200, metavar="RATE", help="A's sipp rate (200)")
    isolation.add_argument(
        "--hung-rate", type=positive, default=50, metavar="RATE", help="B's registrations/s to its hung webhook (50)"
    )
    isolation.add_argument(
        "--heartbeat-rate", type=positive, default=5, metavar="RATE", help="feature-server heartbeats/s (5)"
    )
    soak = parser.add_argument_group(
        "soak", "--soak runs this instead of the ladders: Redis memory per phone and per refresh (bench/soak.py)"
    )
    soak.add_argument("--soak", action="store_true", help="phones register once, then refresh from the same source")
    soak.add_argument("--phones", type=positive, default=5000, help="distinct phones, one socket each (5000)")
    soak.add_argument("--rounds", type=positive, default=20, help="refresh rounds after the registration (20)")
    soak.add_argument(
        "--soak-rate", type=positive, default=1000, metavar="RATE", help="SIP transactions/s of the phones (1000)"
    )
    soak.add_argument(
        "--change-every", type=non_negative, default=5, metavar="N", help="every Nth refresh round, phones move (5)"
    )
    soak.add_argument(
        "--change-percent", type=float, default=5.0, metavar="P", help="share of the phones that move then, in %% (5)"
    )
    parser.add_argument("--redis-db", type=int, default=11, help="Redis database number of the run (11)")
    parser.add_argument(
        "--redis-cluster",
        action="store_true",
        help="a local Redis Cluster of three masters for the run instead",
    )
    parser.add_argument(
        "--partitions", type=int, default=3, help="SIDECAR_PARTITIONS of the service with --redis-cluster (3)"
    )
    parser.add_argument("--results-dir", type=Path, default=REPO / "bench" / "results")
    parser.add_argument(
        "--profile", type=int, metavar="RATE", help="py-spy the service processes during the registration step at RATE"
    )
    parser.add_argument(
        "--sidecar",
        default=str(SIDECAR),
        metavar="COMMAND",
        help="the sbc-sidecar executable to run (another build, for a before/after comparison)",
    )
    parser.add_argument(
        "--keep-services", action="store_true", help="leave Redis/MariaDB running even if this run started them"
    )
    parser.add_argument("--keep-work", action="store_true", help="keep the work directory (logs, sipp stats)")
    return parser
