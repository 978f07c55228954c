"""Profile summaries: cProfile (one thread) and py-spy collapsed stacks (every thread of a process).

Both come out as the top functions with their share of the profiled time:
`self_pct` is time in the function itself, `cum_pct` time in it and everything it called.
"""

from __future__ import annotations

import cProfile
import pstats
import re
from collections import Counter
from pathlib import Path
from typing import Any

from benchmarks.common import REPO


def _where(filename: str, line: int) -> str:
    path = Path(filename)
    try:
        return f"{path.relative_to(REPO)}:{line}"
    except ValueError:
        parts = path.parts
        if "site-packages" in parts:
            return "/".join(parts[parts.index("site-packages") + 1 :]) + f":{line}"
        return f"{filename}:{line}" if line else filename


def summarize_pstats(profiler: cProfile.Profile | pstats.Stats, *, limit: int = 15) -> dict[str, Any]:
    stats = profiler if isinstance(profiler, pstats.Stats) else pstats.Stats(profiler)
    raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    total = sum(v[2] for v in raw.values()) or 1e-9
    rows = []
    for (filename, line, func), (_cc, calls, tottime, cumtime, _callers) in raw.items():
        rows.append(
            {
                "function": func,
                "where": _where(filename, line),
                "calls": calls,
                "self_s": round(tottime, 4),
                "self_pct": round(100 * tottime / total, 1),
                "cum_s": round(cumtime, 4),
                "cum_pct": round(100 * min(cumtime, total) / total, 1),
            }
        )
    by_self = sorted(rows, key=lambda r: -r["self_s"])[:limit]
    by_cum = sorted(rows, key=lambda r: -r["cum_s"])[:limit]
    return {"total_s": round(total, 3), "by_self": by_self, "by_cumulative": by_cum}


_LINE = re.compile(r"^(.*) \((.*?):\d+\)$")


def _function(frame: str) -> str:
    """`f (path.py:12)` -> `f (path.py)`: samples add up per function, not per line."""
    match = _LINE.match(frame)
    return f"{match.group(1)} ({match.group(2)})" if match else frame


def summarize_collapsed(path: Path, *, limit: int = 20, skip_threads: tuple[str, ...] = ()) -> dict[str, Any]:
    """py-spy `--format raw` output: one `frame;frame;... count` line per distinct stack.

    With `--threads` the first frame names the thread. Idle threads are not sampled
    (py-spy's default), so shares are of the time some thread was running. Frames
    are aggregated per function (line numbers dropped).
    """
    self_counts: Counter[str] = Counter()
    cum_counts: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        thread = frames[0] if frames and frames[0].startswith(("thread", "process")) else ""
        if thread and any(s in thread for s in skip_threads):
            continue
        if thread:
            frames = frames[1:]
            threads[re.sub(r"\(\d+\): ", "", thread)] += count
        frames = [_function(f) for f in frames]
        total += count
        if frames:
            self_counts[frames[-1]] += count
        for frame in set(frames):
            cum_counts[frame] += count
    total = total or 1

    def rows(counter: Counter[str]) -> list[dict[str, Any]]:
        return [
            {"function": f, "samples": n, "pct": round(100 * n / total, 1)}
            for f, n in counter.most_common(limit)
        ]

    return {
        "samples": total,
        "threads": {t: round(100 * n / total, 1) for t, n in threads.most_common(10)},
        "by_self": rows(self_counts),
        "by_cumulative": rows(cum_counts),
    }
