"""A py-spy recording of the service processes during one step, and its top costs.

py-spy samples the running interpreter from outside (no change to the service); `--nonblocking`
keeps it from pausing the process. The raw (collapsed) output has one line per distinct stack
with its sample count; `top_costs` sums them per function, as self time (the frame on top), as
total time (anywhere below the event loop) and per task (the outermost frame below the loop).
"""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from bench.infrastructure import REPO
from bench.processes import Child

SAMPLE_RATE_HZ = 200
_FRAME = re.compile(r"^(?P<function>.*?) \((?P<file>[^()]*?)(?::\d+)?\)$")


def py_spy_binary() -> str:
    here = Path(sys.executable).parent / "py-spy"
    found = str(here) if here.exists() else shutil.which("py-spy")
    if found is None:
        raise RuntimeError("py-spy is not installed: .venv/bin/pip install py-spy")
    return found


def recorder(
    children: list[Child], duration_s: float, out_dir: Path, stem: str
) -> Callable[[], Coroutine[Any, Any, list[Path]]]:
    """A coroutine function recording every child for `duration_s` into `<stem>-<child>.txt`."""
    binary = py_spy_binary()

    async def record_all() -> list[Path]:
        async def record(child: Child) -> Path:
            path = out_dir / f"{stem}-{child.name}.txt"
            process = await asyncio.create_subprocess_exec(
                binary,
                "record",
                "--pid",
                str(child.pid),
                "--format",
                "raw",
                "--rate",
                str(SAMPLE_RATE_HZ),
                "--duration",
                str(max(1, int(duration_s))),
                "--nonblocking",
                "--output",
                str(path),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            try:
                await asyncio.wait_for(process.wait(), duration_s + 30)
            finally:
                if process.returncode is None:
                    process.kill()
                    await process.wait()
            return path

        return list(await asyncio.gather(*(record(child) for child in children)))

    return record_all


def _function(frame: str) -> str:
    match = _FRAME.match(frame.strip())
    if match is None:
        return frame.strip()
    file = match["file"]
    for marker in ("/site-packages/", f"{REPO}/", "/lib/python3"):  # the checkout's own files: relative
        if marker in file:
            file = file.split(marker, 1)[1]
            break
    return f"{match['function']} ({file})"


def top_costs(raw_path: Path, limit: int = 15) -> dict[str, object]:
    """Self and total sample shares per function of one py-spy raw recording."""
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    packages: Counter[str] = Counter()
    roots: Counter[str] = Counter()
    samples = 0
    for line in raw_path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_function(frame) for frame in stack.split(";") if frame.strip()]
        if not frames:
            continue
        samples += count
        own[frames[-1]] += count
        packages[_package(frames[-1])] += count
        inner = _below_loop(frames)
        if inner:
            roots[inner[0]] += count
        for function in set(inner):
            total[function] += count

    def share(counter: Counter[str]) -> list[dict[str, object]]:
        return [
            {"function": name, "percent": round(100.0 * n / samples, 1), "samples": n}
            for name, n in counter.most_common(limit)
        ]

    if not samples:
        return {"samples": 0, "self": [], "total": [], "self_by_package": [], "by_task": []}
    return {
        "samples": samples,
        "self": share(own),
        "total": share(total),
        "self_by_package": share(packages),
        "by_task": share(roots),
    }


def _below_loop(frames: list[str]) -> list[str]:
    """The frames a task or callback runs, without the entry point and the event loop above them
    (coroutines resumed by uvloop's C code have no such frames at all)."""
    for index in range(len(frames) - 1, -1, -1):
        if frames[index].startswith("Runner.run ("):
            return frames[index + 1 :]
    return frames


def _package(function: str) -> str:
    """`pack_command (redis/asyncio/connection.py)` → `redis`; the event loop's own C code shows as
    time in `Runner.run` (uvloop runs callbacks below it)."""
    if function.startswith("Runner.run ("):
        return "uvloop (C: loop, sockets, callbacks)"
    file = function.rpartition("(")[2].rstrip(")")
    return file.split("/", 1)[0] if "/" in file else file
