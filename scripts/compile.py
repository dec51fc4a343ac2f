"""Compiles the hot-path modules (runtime/compiled.py) with mypyc, in place; does nothing when up to date.

Usage: .venv/bin/python scripts/compile.py [--force | --clean]
  --force  build even when up to date
  --clean  remove every build (the sources run); do this before checking out an older commit in place
Needs mypy (for mypyc), setuptools, a C compiler and Python's headers. Without them, or when the build fails,
every build is removed and the sources run (exit 1, one line on stderr).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from runtime.compiled import (  # noqa: E402
    COMPILED_MODULES,
    GROUP_LIBRARY,
    MANIFEST,
    all_builds,
    compiled_modules,
    orphan_builds,
    source_digests,
    stale_modules,
)


def clean() -> None:
    for built in all_builds():
        built.unlink()
    (ROOT / MANIFEST).unlink(missing_ok=True)


def missing_toolchain() -> str | None:
    compiler = (sysconfig.get_config_var("CC") or "cc").split()[0]
    if shutil.which(compiler) is None:
        return f"no C compiler ({compiler})"
    if not (Path(sysconfig.get_paths()["include"]) / "Python.h").exists():
        return "no Python headers (Debian: python3-dev)"
    try:
        import mypyc.build  # noqa: F401
        import setuptools  # noqa: F401
    except ImportError as exc:
        return f"no {exc.name} in this environment"
    return None


def build() -> None:
    from mypyc.build import mypycify
    from setuptools import Distribution

    os.chdir(ROOT)
    for orphan in orphan_builds():  # a module taken off the list runs from its source again
        orphan.unlink()
    digests = source_digests()  # the sources as this build reads them: an edit made meanwhile shows as stale
    group = GROUP_LIBRARY.replace("/", ".").removesuffix("__mypyc")  # mypyc appends the suffix itself
    extensions = mypycify(list(COMPILED_MODULES), opt_level="3", group_name=group)
    distribution = Distribution({"name": "sbc-sidecar-compiled", "ext_modules": extensions})
    command = distribution.get_command_obj("build_ext")
    command.inplace = True  # type: ignore[attr-defined]
    distribution.run_command("build_ext")
    manifest = ROOT / MANIFEST
    manifest.parent.mkdir(exist_ok=True)
    manifest.write_text(json.dumps(digests, indent=1, sort_keys=True))


def main() -> int:
    arguments = sys.argv[1:]
    if "--clean" in arguments:
        clean()
        return 0
    up_to_date = not stale_modules() and len(compiled_modules()) == len(COMPILED_MODULES)
    if up_to_date and "--force" not in arguments:
        return 0
    problem = missing_toolchain()
    if problem is None:
        try:
            build()
        except (Exception, SystemExit) as exc:  # noqa: BLE001 - any build failure leaves the sources running
            problem = f"the build failed: {exc!r}"
    if problem is not None:
        clean()
        print(f"compile.py: {problem}; the hot path runs as Python", file=sys.stderr)
        return 1
    print(f"compiled {len(COMPILED_MODULES)} modules with mypyc", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
