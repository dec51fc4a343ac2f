"""Compiles the hot-path modules (runtime/compiled.py) with mypyc, in place; does nothing when up to date.

Usage: .venv/bin/python scripts/compile.py [--force]
Needs mypy (for mypyc), setuptools and a C compiler; scripts/venv.sh installs the first two.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from runtime.compiled import (  # noqa: E402
    COMPILED_MODULES,
    GROUP_LIBRARY,
    compiled_modules,
    orphan_builds,
    stale_modules,
)


def main() -> int:
    force = "--force" in sys.argv[1:]
    for orphan in orphan_builds():  # a module taken off the list must run from its source again
        orphan.unlink()
    if not force and not stale_modules() and len(compiled_modules()) == len(COMPILED_MODULES):
        return 0
    from mypyc.build import mypycify
    from setuptools import Distribution

    os.chdir(ROOT)
    group = GROUP_LIBRARY.replace("/", ".").removesuffix("__mypyc")  # mypyc appends the suffix itself
    extensions = mypycify(list(COMPILED_MODULES), opt_level="3", group_name=group)
    distribution = Distribution({"name": "sbc-sidecar-compiled", "ext_modules": extensions})
    command = distribution.get_command_obj("build_ext")
    command.inplace = True  # type: ignore[attr-defined]
    distribution.run_command("build_ext")
    for name in COMPILED_MODULES:  # a build is as new as its source, even when the compiler kept an old object
        for built in Path(name).parent.glob(Path(name).stem + ".*.so"):
            built.touch()
    print(f"compiled {len(COMPILED_MODULES)} modules with mypyc", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
