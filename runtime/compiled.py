"""The modules compiled to C with mypyc, and whether the builds beside them are those of their sources.

The SIP edge runs once per datagram and is plain string work, which the interpreter does about half as
fast as the same code compiled by mypyc (bench/README.md). `scripts/compile.py` builds these modules in
place: the extension module lies beside its source and Python imports it first. A source edited after its
build would be shadowed by the old build, so the test run and `sbc-sidecar run` refuse a build whose source
is not the one it was built from: the build records the SHA-256 of every source it read (modification
times lie after copies, extractions and edits made while a build runs).
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import json
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
PACKAGES = ("events", "ingest", "processors", "projections", "runtime")
GROUP_LIBRARY = "ingest/compiled__mypyc"  # mypyc's shared runtime of the group, beside the modules
MANIFEST = "build/compiled-sources.json"  # source -> SHA-256 of the text each build was made from


def _built(source: Path) -> list[Path]:
    stem = source.with_suffix("")
    return [stem.with_name(stem.name + suffix) for suffix in importlib.machinery.EXTENSION_SUFFIXES]


def source_digests(root: Path = ROOT) -> dict[str, str]:
    """SHA-256 of each compiled module's source as it is now."""
    return {name: hashlib.sha256((root / name).read_bytes()).hexdigest() for name in COMPILED_MODULES}


def all_builds(root: Path = ROOT) -> list[Path]:
    """Every extension module in the project's packages (compiled modules, the group library, leftovers)."""
    suffixes = tuple(importlib.machinery.EXTENSION_SUFFIXES)
    found = {path for package in PACKAGES for path in (root / package).rglob("*.so") if path.name.endswith(suffixes)}
    return sorted(found)


def stale_modules(root: Path = ROOT) -> list[str]:
    """Builds that must not be imported: not made from the source beside them, or of a module not compiled.

    No build at all is not stale: the source runs.
    """
    builds = all_builds(root)
    if not builds:
        return []
    try:
        recorded = json.loads((root / MANIFEST).read_text())
    except (OSError, ValueError):
        recorded = {}
    current = source_digests(root)
    stale = [
        name
        for name in COMPILED_MODULES
        if any(built.exists() for built in _built(root / name)) and recorded.get(name) != current[name]
    ]
    return stale + [str(path.relative_to(root)) for path in orphan_builds(root)]


def orphan_builds(root: Path = ROOT) -> list[Path]:
    """Extension modules in the project's packages that are neither a listed module's build nor the group's."""
    expected = {built for name in (*COMPILED_MODULES, GROUP_LIBRARY + ".py") for built in _built(root / name)}
    return [path for path in all_builds(root) if path not in expected]


def compiled_modules(root: Path = ROOT) -> list[str]:
    """The modules of COMPILED_MODULES that have a build beside them."""
    return [name for name in COMPILED_MODULES if any(built.exists() for built in _built(root / name))]
