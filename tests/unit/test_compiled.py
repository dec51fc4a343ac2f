"""The guard against a compiled module that is not the build of the source beside it (runtime/compiled.py)."""

from __future__ import annotations

import importlib.machinery
import json
import os
from pathlib import Path

from runtime.compiled import COMPILED_MODULES, GROUP_LIBRARY, MANIFEST, compiled_modules, source_digests, stale_modules

SUFFIX = importlib.machinery.EXTENSION_SUFFIXES[0]


def tree(root: Path, *, built: bool, recorded: bool = True) -> Path:
    """Sources of every compiled module; with `built`, a build of each and the group library, and the manifest."""
    for name in COMPILED_MODULES:
        source = root / name
        source.parent.mkdir(parents=True, exist_ok=True)
        source.write_text(f"# {name}\n")
        if built:
            source.with_suffix("").with_name(source.stem + SUFFIX).write_bytes(b"")
    if built:
        (root / (GROUP_LIBRARY + SUFFIX)).write_bytes(b"")
    if built and recorded:
        (root / MANIFEST).parent.mkdir(parents=True, exist_ok=True)
        (root / MANIFEST).write_text(json.dumps(source_digests(root)))
    return root


def test_builds_of_the_sources_beside_them_are_fresh(tmp_path: Path) -> None:
    root = tree(tmp_path, built=True)
    assert stale_modules(root) == []
    assert compiled_modules(root) == list(COMPILED_MODULES)


def test_a_source_changed_since_its_build_is_reported_whatever_its_time(tmp_path: Path) -> None:
    root = tree(tmp_path, built=True)
    edited = root / COMPILED_MODULES[2]
    stat = edited.stat()
    edited.write_text("# edited\n")
    os.utime(edited, ns=(stat.st_atime_ns, stat.st_mtime_ns - 10**12))  # older than the build, as after a copy
    assert stale_modules(root) == [COMPILED_MODULES[2]]


def test_builds_without_a_record_of_their_sources_are_all_stale(tmp_path: Path) -> None:
    root = tree(tmp_path, built=True, recorded=False)
    assert stale_modules(root) == list(COMPILED_MODULES)


def test_without_a_build_the_source_runs_and_nothing_is_stale(tmp_path: Path) -> None:
    root = tree(tmp_path, built=False)
    assert stale_modules(root) == [] and compiled_modules(root) == []


def test_a_build_of_a_module_no_longer_compiled_is_reported(tmp_path: Path) -> None:
    root = tree(tmp_path, built=True)
    orphan = root / "ingest" / "fronts" / ("dispatch" + SUFFIX)
    orphan.parent.mkdir(parents=True)
    orphan.write_bytes(b"")
    assert stale_modules(root) == ["ingest/fronts/dispatch" + SUFFIX]


def test_the_service_refuses_to_start_on_a_stale_build(monkeypatch: object, capsys: object) -> None:
    import runtime.compiled
    from runtime.cli import EXIT_CONFIG, main

    monkeypatch.setattr(runtime.compiled, "stale_modules", lambda: ["ingest/sip/uri.py"])  # type: ignore[attr-defined]
    assert main(["run"], env={}) == EXIT_CONFIG
    assert "ingest/sip/uri.py" in capsys.readouterr().err  # type: ignore[attr-defined]
