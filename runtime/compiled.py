"""The modules compiled to C with mypyc, and whether their compiled form is older than their source.

The SIP edge runs once per datagram and is plain string work, which the interpreter does about half as
fast as the same code compiled by mypyc (bench/README.md). `scripts/compile.py` builds these modules in
place: the extension module lies beside its source and Python imports it first. A source edited after
its build would be shadowed by the old build, so the test run and `sbc-sidecar run` refuse a stale one.
"""

from __future__ import annotations

import importlib.machinery
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

COMPILED_MODULES = (
    "ingest/sip/errors.py",
    "ingest/sip/syntax.py",
    "ingest/sip/uri.py",
    "ingest/sip/headers.py",
    "ingest/sip/message.py",
    "ingest/sip/parser.py",
    "ingest/sip/digest.py",
    "ingest/sip/response.py",
    "ingest/sip/tags.py",
    "ingest/sip/keepalive.py",
    "ingest/requests.py",
)


def _built(source: Path) -> list[Path]:
    stem = source.with_suffix("")
    return [stem.with_name(stem.name + suffix) for suffix in importlib.machinery.EXTENSION_SUFFIXES]


PACKAGES = ("events", "ingest", "processors", "projections", "runtime")
GROUP_LIBRARY = "ingest/compiled__mypyc"  # mypyc's shared runtime of the group, beside the modules


def stale_modules(root: Path = ROOT) -> list[str]:
    """Builds that must not be imported: older than their source, or of a module no longer compiled.

    A missing build is not stale: the source runs.
    """
    stale = []
    for name in COMPILED_MODULES:
        source = root / name
        for built in _built(source):
            if built.exists() and built.stat().st_mtime < source.stat().st_mtime:
                stale.append(name)
    return stale + [str(path.relative_to(root)) for path in orphan_builds(root)]


def orphan_builds(root: Path = ROOT) -> list[Path]:
    """Extension modules in the project's packages that are neither a listed module's build nor the group's."""
    expected = {built for name in (*COMPILED_MODULES, GROUP_LIBRARY + ".py") for built in _built(root / name)}
    suffixes = tuple(importlib.machinery.EXTENSION_SUFFIXES)
    found = {path for package in PACKAGES for path in (root / package).rglob("*.so") if path.name.endswith(suffixes)}
    return sorted(found - expected)


def compiled_modules(root: Path = ROOT) -> list[str]:
    """The modules of COMPILED_MODULES that have a build beside them."""
    return [name for name in COMPILED_MODULES if any(built.exists() for built in _built(root / name))]
