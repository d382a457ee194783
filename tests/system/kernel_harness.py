"""Drive KernelProbes the way the recorder does: a SessionContext writing into a RecordingWriter,
sample() every interval from one thread, stop(), then read the recording back."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pyarrow as pa

from autoglm_trace import schema
from autoglm_trace.analysis.reader import Recording
from autoglm_trace.collector import SessionContext
from autoglm_trace.probes.kernel import KernelProbes
from autoglm_trace.target import TargetTree
from autoglm_trace.tracer.writer import RecordingWriter


class KernelRun:
    def __init__(self, directory: Path, target: TargetTree, options: dict[str, Any] | None = None,
                 interval_s: float = 0.1) -> None:
        self.path = Path(directory)
        self.writer = RecordingWriter(
            self.path, {"format": schema.FORMAT_NAME, "schema_version": schema.SCHEMA_VERSION}
        )
        self.ctx = SessionContext(self.writer.emit, self.writer.emit_columns, self.writer.emit_batch,
                                  target, is_root=True)
        self.probes = KernelProbes(options)
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.errors: list[BaseException] = []

    def start(self) -> KernelRun:
        self.probes.start(self.ctx)
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.probes.sample(time.monotonic_ns())
                self.writer.flush()
            except BaseException as e:  # noqa: BLE001 - surfaced by stop()
                self.errors.append(e)
                return

    def stop(self) -> Recording:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.probes.stop()
        self.writer.close()
        if self.errors:
            raise self.errors[0]
        return Recording(self.path)


def table(rec: Recording, name: str) -> pa.Table:
    return rec.table(name)


def status_counts(pid: int) -> tuple[int, int]:
    vol = inv = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("voluntary_ctxt_switches:"):
            vol = int(line.split()[1])
        elif line.startswith("nonvoluntary_ctxt_switches:"):
            inv = int(line.split()[1])
    return vol, inv


def stat_faults(pid: int) -> tuple[int, int]:
    """(minflt, majflt) from /proc/PID/stat (fields 10 and 12; fs/proc/array.c do_task_stat)."""
    raw = Path(f"/proc/{pid}/stat").read_text()
    fields = raw[raw.rindex(")") + 2 :].split()
    return int(fields[7]), int(fields[9])


def wait_blocked(pid: int, timeout: float = 5.0) -> None:
    """Wait until the process sleeps (state S) -- it is parked on a read of its stdin."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        raw = Path(f"/proc/{pid}/stat").read_text()
        if raw[raw.rindex(")") + 2] == "S":
            time.sleep(0.05)
            return
        time.sleep(0.01)
    raise TimeoutError(f"pid {pid} did not block")


class GatedChild:
    """A python child that runs CODE between two gates: it blocks on stdin before and after, so
    /proc counters read at the gates bracket exactly the traced work."""

    PRELUDE = "import sys, os, time\nsys.stdin.readline()\n"
    EPILOGUE = "\nsys.stdout.write('done\\n'); sys.stdout.flush()\nsys.stdin.readline()\n"

    def __init__(self, code: str, **popen: Any) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", self.PRELUDE + code + self.EPILOGUE],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, **popen,
        )
        self.pid = self.proc.pid

    def release(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()

    def wait_done(self, timeout: float = 60) -> None:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line.strip() == "done", f"child said {line!r}"
        wait_blocked(self.pid)

    def finish(self) -> int:
        try:
            self.release()
        except BrokenPipeError:
            pass
        return self.proc.wait(timeout=30)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
