"""One clock for every table: CLOCK_MONOTONIC nanoseconds.

``bpf_ktime_get_ns()`` reads CLOCK_MONOTONIC (kernel/bpf/helpers.c, ``ktime_get_mono_fast_ns``),
and so does ``time.monotonic_ns()`` on Linux, so BPF events, psutil samples, NVML samples and spans
line up without conversion. The manifest stores the offset to UNIX time, measured here.
"""

from __future__ import annotations

import time


def now_ns() -> int:
    return time.monotonic_ns()


def monotonic_to_wall_offset_ns(rounds: int = 5) -> int:
    """UNIX ns minus monotonic ns, taken from the tightest of a few sandwiched reads."""
    best: tuple[int, int] | None = None
    for _ in range(rounds):
        a = time.monotonic_ns()
        w = time.time_ns()
        b = time.monotonic_ns()
        width = b - a
        offset = w - (a + width // 2)
        if best is None or width < best[0]:
            best = (width, offset)
    assert best is not None
    return best[1]


def boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""
