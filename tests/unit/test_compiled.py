"""The guard against a compiled module older than its source (runtime/compiled.py)."""

from __future__ import annotations

import importlib.machinery
import os
from pathlib import Path

from runtime.compiled import COMPILED_MODULES, compiled_modules, stale_modules

SUFFIX = importlib.machinery.EXTENSION_SUFFIXES[0]


def tree(root: Path, *, built: bool, built_at: float, source_at: float) -> Path:
    for name in COMPILED_MODULES:
        source = root / name
        source.parent.mkdir(parents=True, exist_ok=True)
        source.write_text("x = 1\n")
        os.utime(source, (source_at, source_at))
        if built:
            extension = source.with_suffix("").with_name(source.stem + SUFFIX)
            extension.write_bytes(b"")
            os.utime(extension, (built_at, built_at))
    return root


def test_a_build_newer_than_its_source_is_fresh(tmp_path: Path) -> None:
    root = tree(tmp_path, built=True, built_at=2_000_000, source_at=1_000_000)
    assert stale_modules(root) == []
    assert compiled_modules(root) == list(COMPILED_MODULES)


def test_a_source_edited_after_its_build_is_reported(tmp_path: Path) -> None:
    root = tree(tmp_path, built=True, built_at=1_000_000, source_at=1_000_000)
    edited = root / COMPILED_MODULES[2]
    os.utime(edited, (3_000_000, 3_000_000))
    assert stale_modules(root) == [COMPILED_MODULES[2]]


def test_without_a_build_the_source_runs_and_nothing_is_stale(tmp_path: Path) -> None:
    root = tree(tmp_path, built=False, built_at=0, source_at=1_000_000)
    assert stale_modules(root) == [] and compiled_modules(root) == []


def test_the_service_refuses_to_start_on_a_stale_build(monkeypatch: object, capsys: object) -> None:
    import runtime.compiled
    from runtime.cli import EXIT_CONFIG, main

    monkeypatch.setattr(runtime.compiled, "stale_modules", lambda: ["ingest/sip/uri.py"])  # type: ignore[attr-defined]
    assert main(["run"], env={}) == EXIT_CONFIG
    assert "ingest/sip/uri.py" in capsys.readouterr().err  # type: ignore[attr-defined]


def test_a_build_of_a_module_no_longer_compiled_is_reported(tmp_path: Path) -> None:
    root = tree(tmp_path, built=True, built_at=2_000_000, source_at=1_000_000)
    group = root / "ingest" / ("compiled__mypyc" + SUFFIX)
    group.write_bytes(b"")
    orphan = root / "ingest" / "fronts" / ("dispatch" + SUFFIX)
    orphan.parent.mkdir(parents=True)
    orphan.write_bytes(b"")
    assert stale_modules(root) == ["ingest/fronts/dispatch" + SUFFIX]
