"""The one-line live status shown on stderr while ``record`` runs (elapsed, rows per table, lost
events, target RSS / CPU, warnings). Shown only on a terminal; refreshed at most 4 times a second."""

from __future__ import annotations

import sys
import time
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.text import Text

from autoglm_trace.printable import printable
from autoglm_trace.signals import human_bytes


def human_count(n: float) -> str:
    if n >= 1e6:
        return f"{n / 1e6:.1f}M"
    if n >= 1e3:
        return f"{n / 1e3:.1f}k"
    return str(int(n))


def status_text(rec: Any, cpu_pct: float | None) -> Text:
    elapsed = (time.monotonic_ns() - rec.started_ns) / 1e9 if rec.started_ns else 0.0
    st = rec.status()
    proc = st.get("proc", {})
    lost = sum(int(v.get("lost", 0) or 0) for v in st.values() if isinstance(v, dict))
    rows = rec.writer.rows() if rec.writer else {}
    t = Text()
    t.append("● REC ", style="bold red")
    t.append(f"{elapsed:6.1f}s  ", style="bold")
    t.append(f"{proc.get('procs', 0)} procs  rss {human_bytes(proc.get('rss_bytes'))}  ")
    if cpu_pct is not None:
        t.append(f"cpu {cpu_pct:.0f}%  ")
    busy = sorted(rows.items(), key=lambda kv: -kv[1])[:5]
    t.append(" ".join(f"{printable(k)} {human_count(v)}" for k, v in busy), style="dim")
    t.append("  lost ", style="dim")
    t.append(str(lost), style="bold red" if lost else "green")
    alerts = [v["alert"] for v in st.values() if isinstance(v, dict) and v.get("alert")]
    notes = rec.ctx.notes if rec.ctx else []
    if alerts:
        t.append(f"  ⚠ {printable(alerts[-1], 100)}", style="bold yellow")
    elif notes:
        t.append(f"  ⚠ {printable(notes[-1], 80)}", style="yellow")
    return t


class StatusLine:
    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled and sys.stderr.isatty()
        self._live: Live | None = None
        self._last = 0.0
        self._cpu_prev: tuple[float, float] | None = None

    def start(self) -> None:
        if self.enabled:
            self._live = Live(Text(""), console=Console(stderr=True), refresh_per_second=4, transient=True)
            self._live.start()

    def update(self, rec: Any) -> None:
        if self._live is None:
            return
        now = time.monotonic()
        if now - self._last < 0.25:
            return
        self._last = now
        cpu_s = rec.status().get("proc", {}).get("cpu_s")
        pct = None
        if cpu_s is not None:
            if self._cpu_prev is not None and now > self._cpu_prev[0]:
                pct = 100.0 * (cpu_s - self._cpu_prev[1]) / (now - self._cpu_prev[0])
            self._cpu_prev = (now, cpu_s)
        self._live.update(status_text(rec, pct))

    def stop(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None
