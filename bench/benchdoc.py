"""Shared bits of the issue-7 benchmarks: machine facts, recorder sampling, markdown sections.

Each benchmark prints a markdown block and, with ``--doc PATH``, replaces its own section of that
file (between ``<!-- NAME:begin -->`` and ``<!-- NAME:end -->``), so ``make bench-*`` keeps
docs/benchmarks-overhead.md current without touching the other sections.
"""

from __future__ import annotations

import os
import platform
import shlex
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
CLK_TCK = os.sysconf("SC_CLK_TCK")


def autoglm_trace() -> list[str]:
    exe = VENV_BIN / "autoglm-trace"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "autoglm_trace.tracer.cli"]


def machine_facts() -> str:
    mem = "?"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem = f"{int(line.split()[1]) / 2**20:.1f} GiB"
    except OSError:
        pass
    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    return (f"Linux {platform.release()}, {os.cpu_count()} CPUs ({model}), {mem} RAM, "
            f"Python {platform.python_version()}, run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
            f"load average at the end {load} (other work shares this VM: compare within a run only)")


def command_line() -> str:
    return " ".join(shlex.quote(a) for a in [".venv/bin/python", os.path.relpath(sys.argv[0], REPO), *sys.argv[1:]])


class ProcWatch:
    """Polls /proc/PID of a running process: CPU seconds (utime+stime, the process itself, not its
    children: fs/proc/array.c do_task_stat fields 14/15) and peak RSS (VmHWM)."""

    def __init__(self, pid: int, every_s: float = 0.2) -> None:
        self.pid = pid
        self.every_s = every_s
        self.cpu_s = 0.0
        self.hwm_bytes = 0
        self.rss_bytes = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _read(self) -> bool:
        try:
            stat = Path(f"/proc/{self.pid}/stat").read_text()
            status = Path(f"/proc/{self.pid}/status").read_text()
        except OSError:
            return False
        f = stat[stat.rindex(")") + 2 :].split()
        if f[0] == "Z":  # zombie: counters are final but VmHWM is gone
            return False
        self.cpu_s = (int(f[11]) + int(f[12])) / CLK_TCK
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                self.hwm_bytes = max(self.hwm_bytes, int(line.split()[1]) * 1024)
            elif line.startswith("VmRSS:"):
                self.rss_bytes = int(line.split()[1]) * 1024
        return True

    def _run(self) -> None:
        while not self._stop.is_set() and self._read():
            self._stop.wait(self.every_s)

    def stop(self) -> None:
        self._stop.set()
        self._t.join()


def load_average() -> str:
    """The 1/5/15-minute load as the section headers print it (taken at a run's start and end)."""
    return " / ".join(f"{x:.1f}" for x in os.getloadavg())


def section_header(title: str, load_start: str, *, sudo: bool = False) -> list[str]:
    """Title, the exact command and the machine with its load at the start and end: every section
    a benchmark writes starts with these, so a figure is never in the docs without its load."""
    return [title, "", f"`{'sudo ' if sudo else ''}{command_line()}`", "",
            machine_facts() + f"; load average at the start {load_start}, at the end {load_average()}", ""]


def replace_section(doc: Path, name: str, text: str, *, new_doc: str = "# Benchmarks\n\n",
                    heading: str = "") -> None:
    """Replace the ``<!-- NAME:begin/end -->`` block of DOC with TEXT; append it (under HEADING) when
    absent, and create DOC (starting with NEW_DOC) when missing. Other sections are left as they are."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    block = f"{begin}\n{text.rstrip()}\n{end}\n"
    old = doc.read_text() if doc.exists() else new_doc
    if begin in old and end in old:
        new = old[: old.index(begin)] + block + old[old.index(end) + len(end) + 1 :]
    else:
        new = old.rstrip() + "\n\n" + heading + block
    doc.write_text(new)


def bcc_tool(name: str) -> str | None:
    for d in ("/usr/sbin", "/usr/share/bcc/tools"):
        for cand in (f"{d}/{name}-bpfcc", f"{d}/{name}"):
            if os.access(cand, os.X_OK):
                return cand
    return None


def run_json(cmd: list[str], timeout: float, **kw) -> tuple[int, str, str]:
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    return p.returncode, p.stdout, p.stderr
