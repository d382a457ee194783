"""Faults around a running recorder, with real processes: the recording must survive them.

- the recorder killed with SIGKILL at random (seeded) moments: every table stays readable up to its
  last flush and the manifest says ``complete: false``;
- SIGTERM / Ctrl-C (SIGINT to the whole process group, as a terminal sends it): a clean end,
  ``complete: true`` and the matching ``stop_reason``;
- targets that misbehave: exit at once, fail to start, fork 100 children, leave orphans behind:
  recorded, and the recorder ends by itself.
(OOM-killed targets and a full disk need root: tests/system/test_faults_root.py.)

Ground truth is independent of the recorder: pids a child writes itself, the kernel's wait status,
the files on disk.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pyarrow.compute as pc
import pytest

from autoglm_trace.analysis.reader import Recording
from autoglm_trace.errors import RecordingError
from tests.cli_helpers import clean_env, one_error_line, read_all

PY = sys.executable





def _kill_tree_of(rec_dir: Path) -> None:
    """A SIGKILLed recorder leaves its target running: end it (pid from the manifest)."""
    try:
        pid = json.loads((rec_dir / "manifest.json").read_text())["target"]["pid"]
    except (OSError, ValueError, KeyError, TypeError):
        return
    if pid:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


# A target that stays busy (several processes, so the sampler writes rows every interval) until
# killed or for at most 20 s.
BUSY = textwrap.dedent(
    """
    import os, signal, sys, time
    # Ctrl-C ends every process of the target quietly (exit 130), as a well-behaved server does.
    signal.signal(signal.SIGINT, lambda *_: os._exit(130))
    kids, me = [], os.getpid()
    for _ in range(3):
        pid = os.fork()
        if pid == 0:
            end = time.time() + 20
            while time.time() < end and os.getppid() == me:   # die with the parent
                sum(range(2000)); time.sleep(0.001)
            os._exit(0)
        kids.append(pid)
    for k in kids:
        os.waitpid(k, 0)
    """
)


def _start_record(cli: list[str], out: Path, *cmd: str, extra: tuple[str, ...] = ()) -> subprocess.Popen[str]:
    # Output to files, not pipes: a target left running (SIGTERM does not end it) would hold a pipe
    # open, and waiting for EOF would wait for the target rather than the recorder.
    logs = out.parent / f"{out.name}.log"
    return subprocess.Popen(
        [*cli, "record", "-q", "--no-gpu", "--no-spans", *extra, "-o", str(out), "--", *cmd],
        stdout=open(f"{logs}.out", "w"), stderr=open(f"{logs}.err", "w"),  # noqa: SIM115
        text=True, env=clean_env(), start_new_session=True,
    )


def _outputs(out: Path) -> tuple[str, str]:
    logs = out.parent / f"{out.name}.log"
    return Path(f"{logs}.out").read_text(), Path(f"{logs}.err").read_text()


def _wait_for_rows(out: Path, timeout: float = 30.0) -> None:
    """Until the recorder has flushed some samples (read back through the reader itself)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            if Recording(out).table("proc_samples").num_rows > 0:
                return
        except RecordingError:
            pass  # not created yet / manifest not written yet
        time.sleep(0.1)
    raise AssertionError(f"no samples flushed to {out} within {timeout} s")


@pytest.mark.slow
def test_sigkill_at_random_moments_leaves_readable_recording(cli: list[str], tmp_path: Path) -> None:
    rng = random.Random(20261125)
    for i in range(3):
        out = tmp_path / f"rec{i}"
        p = _start_record(cli, out, PY, "-c", BUSY)
        try:
            _wait_for_rows(out)
            time.sleep(rng.uniform(0.0, 1.5))  # a random moment, possibly mid-flush
            os.kill(p.pid, signal.SIGKILL)
            p.wait(timeout=10)
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
            _kill_tree_of(out)
        assert p.returncode == -signal.SIGKILL
        rec = Recording(out)
        rows = read_all(rec)
        assert rec.manifest["complete"] is False
        assert not rec.complete
        assert rows["proc_samples"] > 0 and rows["processes"] >= 1
        # The timestamps that were kept are sane: inside the session, never after now.
        ts = rec.table("proc_samples").column("ts_ns")
        assert pc.min(ts).as_py() >= rec.start_ns
        assert pc.max(ts).as_py() <= time.monotonic_ns()
        # And the CLI reads it without complaint.
        s = subprocess.run([*cli, "summary", str(out), "--json"], capture_output=True, text=True, timeout=60)
        assert s.returncode == 0, s.stderr
        assert json.loads(s.stdout)["complete"] is False


@pytest.mark.parametrize(("how", "reason"), [("sigterm", "terminated"), ("ctrl-c", "interrupted")])
def test_sigterm_and_ctrl_c_end_cleanly(cli: list[str], tmp_path: Path, how: str, reason: str) -> None:
    rng = random.Random(hash(how) & 0xFFFF)
    out = tmp_path / "rec"
    p = _start_record(cli, out, PY, "-c", BUSY, extra=("--json",))
    try:
        _wait_for_rows(out)
        time.sleep(rng.uniform(0.0, 1.0))
        if how == "sigterm":
            os.kill(p.pid, signal.SIGTERM)
        else:
            os.killpg(p.pid, signal.SIGINT)  # what the terminal does: the whole foreground group
        p.wait(timeout=30)
        stdout, stderr = _outputs(out)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
        _kill_tree_of(out)
    assert "Traceback" not in stderr, stderr
    assert p.returncode == 0, stderr
    rec = Recording(out)
    read_all(rec)
    assert rec.complete, (rec.manifest, rec.truncated)
    assert rec.manifest["stop_reason"] == reason
    assert rec.manifest["end_ns"] > rec.start_ns
    assert json.loads(stdout)["complete"] is True
    # The recorder started the target, so ending the recorder ends the target too (and says how).
    assert not rec.manifest["target"].get("still_running"), rec.manifest["target"]
    t = rec.manifest["target"]
    assert t["signal"] == signal.SIGTERM if how == "sigterm" else t["exit_code"] == 130, t


def test_target_exits_at_once(cli: list[str], tmp_path: Path) -> None:
    for code in (0, 7):
        out = tmp_path / f"rec{code}"
        r = subprocess.run([*cli, "record", "-q", "--json", "--no-gpu", "-o", str(out), "--",
                            PY, "-c", f"raise SystemExit({code})"],
                           capture_output=True, text=True, env=clean_env(), timeout=60)
        # A target that failed: the recording is complete and the exit status says it failed.
        assert r.returncode == (0 if code == 0 else 7), r.stderr
        rec = Recording(out)
        assert rec.complete
        assert rec.manifest["stop_reason"] == "target exited"
        assert rec.target["exit_code"] == code
        assert rec.target["signal"] is None
        read_all(rec)


def test_target_that_cannot_start_is_one_line_error(cli: list[str], tmp_path: Path) -> None:
    for cmd, what in (["no-such-command-xyz"], "command not found"), ([str(tmp_path)], "cannot execute"):
        r = subprocess.run([*cli, "record", "-q", "--no-gpu", "-o", str(tmp_path / "rec"), "--", *cmd],
                           capture_output=True, text=True, env=clean_env(), timeout=60)
        assert r.returncode == 5, r.stderr
        assert what in one_error_line(r.stderr)


FORK_100 = textwrap.dedent(
    """
    import os, sys, time
    kids = []
    for i in range(100):
        pid = os.fork()
        if pid == 0:
            time.sleep(1.0)
            os._exit(i % 7)
        kids.append(pid)
    open(sys.argv[1], 'w').write(' '.join(map(str, kids)))
    if sys.argv[2] == 'wait':
        codes = [os.waitstatus_to_exitcode(os.waitpid(k, 0)[1]) for k in kids]
        assert codes == [i % 7 for i in range(100)], codes
    """
)


@pytest.mark.parametrize("mode", ["wait", "orphan"])
def test_target_forks_100_children(cli: list[str], tmp_path: Path, mode: str) -> None:
    out = tmp_path / "rec"
    pids_file = tmp_path / "kids"
    t0 = time.monotonic()
    r = subprocess.run([*cli, "record", "-q", "--json", "--no-gpu", "-o", str(out), "--",
                        PY, "-c", FORK_100, str(pids_file), mode],
                       capture_output=True, text=True, env=clean_env(), timeout=90)
    took = time.monotonic() - t0
    assert r.returncode == 0, r.stderr
    kids = {int(x) for x in pids_file.read_text().split()}
    assert len(kids) == 100
    rec = Recording(out)
    assert rec.complete and rec.manifest["stop_reason"] == "target exited"
    assert rec.target["exit_code"] == 0
    procs = rec.table("processes")
    seen = set(procs.column("pid").to_pylist())
    root = rec.target["pid"]
    if mode == "wait":
        # Every child lived 1 s under a 100 ms sampler: each must be in the recording, as a child of
        # the target's root.
        assert kids <= seen, f"missing {len(kids - seen)} of 100 children"
        parent = dict(zip(procs.column("pid").to_pylist(), procs.column("ppid").to_pylist()))
        assert all(parent[k] == root for k in kids)
    else:
        # The root exits at once: the recorder stops with it (not after the orphans' second).
        assert took < 30
        for k in kids:  # the orphans finish on their own within a second
            try:
                os.kill(k, 0)
            except ProcessLookupError:
                continue
            time.sleep(1.2)
            break
