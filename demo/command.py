"""The body of ``autoglm-trace demo``: a realistic inference server, load, and one injected incident.

    autoglm-trace demo [run] [--duration S] [--incident KIND] [--incident-at S] [--record DIR]
    autoglm-trace demo serve [--port P] [--incident leak|oom --incident-at S] ...
    autoglm-trace demo load --url URL [--duration S] [--rate R]
    autoglm-trace demo hog --cpu|--io|--memory ...

``run`` starts the server (optionally under ``autoglm-trace record``), drives it with the load
generator, injects the incident at ``--incident-at`` and prints the load summary (and, recorded, the
analysis). Noisy neighbours (cpu-hog, io-hog, the memory balloon) are started by ``run`` beside the
server -- its siblings, never its children -- so a recording sees them outside the target.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from autoglm_trace.errors import TargetError, UsageError
from autoglm_trace.tracer.commands._parser import CommandParser

# The server's own trouble (demo/trouble.py): inside the recorded tree.
IN_TREE = ("child-cpu", "child-io", "gil-thread", "lock-holder")
INCIDENTS = ("none", "cpu-hog", "memory-pressure", "io-hog", "leak", "oom", *IN_TREE)
MEMCG_ROOT = Path("/sys/fs/cgroup/memory")
DEMO_DIR = Path(os.environ.get("AUTOGLM_DEMO_DIR", "/var/tmp/autoglm-demo"))

EPILOG = """\
incidents:
  cpu-hog          busy processes (comm noisy-hog) pinned to the server's CPU, outside its tree
  io-hog           a process writing + fsyncing on the server's disk (the server fsyncs a journal)
  memory-pressure  a balloon in the server's memory cgroup squeezes its mmapped weights (root)
  leak             the server stops evicting finished requests' KV caches: RSS climbs
  oom              the leak inside a memory cgroup limit: the kernel OOM-kills the server (root)
  child-cpu        the server forks a CPU-bound child (comm prep-worker) on its own CPUs
  child-io         the server forks a child (comm ckpt-writer) writing + fsyncing on its disk
  gil-thread       a background thread of the server (gil-hog) runs pure Python: it holds the GIL
  lock-holder      a background thread (kv-snapshot) holds the lock every decode step takes

examples:
  sudo autoglm-trace demo --incident cpu-hog --record rec      # record it and print the analysis
  autoglm-trace demo --incident leak --duration 20              # no recorder: just the load summary
  autoglm-trace demo serve --port 8000                          # the server alone (Ctrl-C stops)
  autoglm-trace demo load --url http://127.0.0.1:8000 --duration 30 --rate 4
  autoglm-trace demo hog --cpu --cpus 0 --duration 10           # a noisy neighbour beside `record`
"""


def _cli() -> list[str]:
    return [sys.executable, "-m", "autoglm_trace.tracer.cli"]


def _cpus(s: str) -> list[int]:
    try:
        out = []
        for part in s.split(","):
            if "-" in part:
                a, b = part.split("-")
                out += list(range(int(a), int(b) + 1))
            elif part:
                out.append(int(part))
        if not out:
            raise ValueError
        return out
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a CPU list: {s!r} (e.g. 0 or 0,1 or 0-3)") from None


def _positive(s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {s!r}") from None
    if not v > 0:
        raise argparse.ArgumentTypeError("must be positive")
    return v


# --------------------------------------------------------------------------------------------
# Parsers
# --------------------------------------------------------------------------------------------
def _run_parser() -> argparse.ArgumentParser:
    p = CommandParser("demo", prog="autoglm-trace demo [run]", description=(
        "Run the bundled demo inference server under load, inject one incident, print the load summary "
        "(and with --record, record it and print the analysis). Sub-commands: run (default), serve, "
        "load, hog -- each with --help."),
                                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=_positive, default=25.0, metavar="S", help="load duration (default 25 s)")
    p.add_argument("--incident", choices=INCIDENTS, default="none", help="trouble to inject (default none)")
    p.add_argument("--incident-at", type=float, default=8.0, metavar="S",
                   help="seconds into the load when the incident starts (default 8)")
    p.add_argument("--incident-for", type=_positive, default=None, metavar="S",
                   help="how long the trouble lasts (default: until the load ends); leaves a clean baseline "
                        "after it")
    p.add_argument("--port", type=int, default=0, help="server port (default: a free one)")
    p.add_argument("--record", metavar="DIR", help="run the server under `autoglm-trace record -o DIR`")
    p.add_argument("--record-arg", action="append", default=[], metavar="ARG",
                   help="extra argument for record (repeatable), e.g. --record-arg=--no-bpf")
    p.add_argument("--no-analyze", action="store_true", help="with --record: do not print the analysis")
    p.add_argument("--metrics", choices=("all", "vllm"), default="all",
                   help="with --record: the latency the recording gets -- all (spans, the request journal and "
                        "the /metrics scrape; default) or vllm (the server's vLLM-format histograms alone, as "
                        "from a real vLLM server that cannot send spans)")
    p.add_argument("--rate", type=_positive, default=3.0, help="requests per second (default 3)")
    p.add_argument("--concurrency", type=int, default=4, help="requests in flight at most (default 4)")
    p.add_argument("--workers", type=int, default=2, help="server decode threads (default 2)")
    p.add_argument("--cpus", type=_cpus, default=None,
                   help="CPUs to pin the server (and the cpu hog) to (default: CPU 0 on a multi-core host)")
    p.add_argument("--memcg-limit-mb", type=int, default=256,
                   help="memory-pressure: the server's cgroup limit (default 256)")
    p.add_argument("--keep-mb", type=int, default=12,
                   help="memory-pressure: room the balloon leaves for page cache (default 12)")
    p.add_argument("--oom-headroom-mb", type=int, default=8,
                   help="oom: the limit is set to the server's anon memory + this at the incident (default 8)")
    return p


def _serve_parser() -> argparse.ArgumentParser:
    p = CommandParser("demo", prog="autoglm-trace demo serve", description="Run the demo inference server.",
                                epilog="example:\n  autoglm-trace demo serve --port 8000 --incident leak --incident-at 10",
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--journal", help="request journal (JSON Lines, fsync'ed per request)")
    p.add_argument("--memcg", help="v1 memory cgroup directory to join first (root)")
    p.add_argument("--cpus", type=_cpus, default=None, help="CPU affinity")
    p.add_argument("--incident", choices=("none", "leak", "oom", *IN_TREE), default="none")
    p.add_argument("--incident-at", type=float, default=None, metavar="S")
    p.add_argument("--duration", type=_positive, default=None, metavar="S", help="exit after S seconds")
    p.add_argument("--ready-file", help=argparse.SUPPRESS)
    p.add_argument("--kv-budget-mb", type=int, default=4, help="prefix-cache budget before LRU eviction")
    p.add_argument("--drop-cache", action="store_true",
                   help="drop the weights file's page cache at start, so that it is charged to --memcg")
    p.add_argument("--weights", metavar="FILE",
                   help="weights file to map (default: the shared one in $AUTOGLM_DEMO_DIR, made if missing)")
    return p


def _load_parser() -> argparse.ArgumentParser:
    p = CommandParser("demo", prog="autoglm-trace demo load", description="Drive a /generate server.",
                                epilog="example:\n  autoglm-trace demo load --url http://127.0.0.1:8000 --duration 30",
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", required=True)
    p.add_argument("--duration", type=_positive, default=20.0)
    p.add_argument("--rate", type=_positive, default=3.0)
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--requests", type=int, default=None, help="stop after N requests")
    return p


def _hog_parser() -> argparse.ArgumentParser:
    p = CommandParser("demo", prog="autoglm-trace demo hog", description="A noisy neighbour (comm noisy-hog).",
                                epilog="examples:\n  autoglm-trace demo hog --cpu --cpus 0 --duration 10\n"
                                       "  autoglm-trace demo hog --io --dir /var/tmp --duration 10\n"
                                       "  sudo autoglm-trace demo hog --memory --memcg /sys/fs/cgroup/memory/x",
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    kind = p.add_mutually_exclusive_group(required=True)
    kind.add_argument("--cpu", action="store_true", help="spin on --cpus")
    kind.add_argument("--io", action="store_true", help="write + fsync in --dir")
    kind.add_argument("--memory", action="store_true", help="balloon inside --memcg")
    p.add_argument("--cpus", type=_cpus, default=None, help="CPUs to spin on (default: all)")
    p.add_argument("--dir", default=str(DEMO_DIR), help="directory for --io (default %(default)s)")
    p.add_argument("--memcg", help="v1 memory cgroup directory for --memory")
    p.add_argument("--keep-mb", type=int, default=12)
    p.add_argument("--duration", type=_positive, default=10.0, metavar="S")
    return p


# --------------------------------------------------------------------------------------------
# Entry
# --------------------------------------------------------------------------------------------
def main(argv: list[str]) -> int:
    sub = argv[0] if argv and argv[0] in ("run", "serve", "load", "hog") else "run"
    rest = argv[1:] if argv and argv[0] == sub else argv
    if sub == "serve":
        a = _serve_parser().parse_args(rest)
        from autoglm_trace.demo.server import run_server

        try:
            return run_server(port=a.port, workers=a.workers, journal=a.journal, memcg=a.memcg, cpus=a.cpus,
                              incident=a.incident, incident_at=a.incident_at, duration=a.duration,
                              ready_file=a.ready_file, kv_budget_mb=a.kv_budget_mb,
                              drop_cache=a.drop_cache, weights=a.weights)
        except OSError as e:
            raise TargetError(f"demo server: {e.strerror or e}") from None
    if sub == "load":
        a = _load_parser().parse_args(rest)
        from autoglm_trace.demo.load import main_load

        return main_load(a)
    if sub == "hog":
        return _hog(_hog_parser().parse_args(rest))
    return _run(_run_parser().parse_args(rest))


def _hog(a: argparse.Namespace) -> int:
    from autoglm_trace.demo import hog

    if a.cpu:
        return hog.cpu_hog(a.cpus or sorted(os.sched_getaffinity(0)), a.duration)
    if a.io:
        Path(a.dir).mkdir(parents=True, exist_ok=True)
        return hog.io_hog(a.dir, a.duration)
    if not a.memcg:
        raise UsageError("--memory needs --memcg DIR (a v1 memory cgroup)")
    try:
        return hog.memory_balloon(a.memcg, a.duration, keep_mb=a.keep_mb)
    except OSError as e:
        raise TargetError(f"cannot join {a.memcg}: {e.strerror} (root needed)") from None


# --------------------------------------------------------------------------------------------
# run: server + load + incident
# --------------------------------------------------------------------------------------------
class Demo:
    def __init__(self, a: argparse.Namespace) -> None:
        self.a = a
        self.run_dir = Path(tempfile.mkdtemp(prefix="run-", dir=_demo_dir()))
        self.journal = self.run_dir / "journal.jsonl"
        self.journal.touch()  # record --latency-log wants the file to exist
        from autoglm_trace.tracer.spawn import sudo_user

        # `sudo autoglm-trace demo --record` runs the server as the sudo user: it writes here.
        owner = sudo_user() if a.record else None
        if owner:
            for path in (self.run_dir, self.journal):
                os.chown(path, *owner)
        self.ready = self.run_dir / "ready.json"
        self.memcg: Path | None = None
        self.top: subprocess.Popen[bytes] | None = None  # the server, or record running it
        self.server_pid: int | None = None
        self.url = ""
        self.hogs: list[subprocess.Popen[bytes]] = []
        self.incident_wall: float | None = None
        self.notes: list[str] = []

    # Setup -------------------------------------------------------------------------------------
    def make_memcg(self) -> None:
        if os.geteuid() != 0:
            raise UsageError(f"--incident {self.a.incident} needs root: it puts the server in a memory cgroup "
                             "(run with sudo)")
        if not (MEMCG_ROOT / "cgroup.procs").exists():
            raise UsageError(f"--incident {self.a.incident} needs the v1 memory cgroup at {MEMCG_ROOT}")
        self.memcg = MEMCG_ROOT / f"autoglm-demo-{os.getpid()}"
        self.memcg.mkdir()
        limit = self.a.memcg_limit_mb << 20 if self.a.incident == "memory-pressure" else 1 << 30
        (self.memcg / "memory.limit_in_bytes").write_text(str(limit))

    def start_server(self) -> None:
        port = self.a.port or _free_port()
        self.url = f"http://127.0.0.1:{port}"
        cmd = _cli() + ["demo", "serve", "--port", str(port), "--workers", str(self.a.workers),
                        "--journal", str(self.journal), "--ready-file", str(self.ready)]
        if self.a.incident == "memory-pressure":
            # The weights' pages must belong to the cgroup the balloon squeezes. (Not for oom: there
            # the leak should hit the limit, not first thrash the weights out of the page cache.)
            # Pages of the shared file that another demo server maps cannot be dropped and stay
            # charged to its cgroup, out of the balloon's reach: this server maps a copy of its own.
            cmd += ["--weights", str(self._private_weights()), "--drop-cache"]
        if self.a.cpus:
            cmd += ["--cpus", ",".join(map(str, self.a.cpus))]
        if self.a.record:
            latency = (["--no-spans"] if getattr(self.a, "metrics", "all") == "vllm"
                       else ["--latency-log", str(self.journal)])
            cmd = _cli() + ["record", "-o", self.a.record, "--scrape", self.url + "/metrics",
                            "--scrape-interval", "1", *latency, "-q", *self.a.record_arg, "--", *cmd]
        print(f"demo: starting {'record + ' if self.a.record else ''}server on {self.url}", flush=True)
        self.top = subprocess.Popen(cmd, start_new_session=False)
        deadline = time.monotonic() + (120 if self.a.record else 60)
        while time.monotonic() < deadline:
            if self.top.poll() is not None:
                raise TargetError(f"the demo {'recorder' if self.a.record else 'server'} exited "
                                  f"with status {self.top.returncode} before serving")
            if self.ready.exists():
                try:
                    info = json.loads(self.ready.read_text())
                    self.server_pid = int(info["pid"])
                    urllib.request.urlopen(self.url + "/health", timeout=2).read()
                    if self.memcg:
                        # Moved by us (root), not joined by the server: under `sudo ... record` the
                        # server runs as the sudo user. Its memory from here on is charged there.
                        (self.memcg / "cgroup.procs").write_text(str(self.server_pid))
                    return
                except (OSError, ValueError, KeyError):
                    pass
            time.sleep(0.1)
        raise TargetError("the demo server did not come up within the time limit")

    def _private_weights(self) -> Path:
        from autoglm_trace.demo.server import ModelConfig, default_weights_path, drop_page_cache

        path = self.run_dir / "weights.bin"
        shutil.copyfile(default_weights_path(ModelConfig()), path)
        os.chmod(path, 0o644)  # read by a server that may run as the sudo user
        drop_page_cache(path)  # the copy's pages are charged to us; the server faults them in anew
        return path

    # Incident ----------------------------------------------------------------------------------
    def inject(self, remaining_s: float) -> None:
        kind = self.a.incident
        self.incident_wall = time.time()
        dur = f"{max(1.0, remaining_s):.1f}"
        print(f"demo: injecting {kind} at +{self.a.incident_at:g} s", flush=True)
        if kind == "cpu-hog":
            cpus = self.a.cpus or sorted(os.sched_getaffinity(self.server_pid or 0))
            self._hog(["--cpu", "--cpus", ",".join(map(str, cpus)), "--duration", dur])
        elif kind == "io-hog":
            self._hog(["--io", "--dir", str(self.run_dir), "--duration", dur])
        elif kind == "memory-pressure":
            self._hog(["--memory", "--memcg", str(self.memcg), "--keep-mb", str(self.a.keep_mb), "--duration", dur])
        elif kind in ("leak", "oom", *IN_TREE):
            if kind == "oom":
                self._tighten_memcg()
            body = {"kind": kind, "duration_s": remaining_s if kind in IN_TREE else None}
            req = urllib.request.Request(self.url + "/admin/incident", data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"}, method="POST")
            try:
                urllib.request.urlopen(req, timeout=5).read()
            except OSError as e:
                self.notes.append(f"could not switch the incident on: {e}")

    def _tighten_memcg(self) -> None:
        """Limit = the server's anonymous memory now + headroom: the leak fills it within seconds."""
        from autoglm_trace.demo.hog import memcg_stat

        assert self.memcg is not None
        st = memcg_stat(str(self.memcg))
        base = st.get("total_rss", 0) + st.get("total_shmem", 0)
        limit = base + (self.a.oom_headroom_mb << 20)
        for _ in range(20):
            try:
                (self.memcg / "memory.limit_in_bytes").write_text(str(limit))
                print(f"demo: memory cgroup limit set to {limit >> 20} MiB (server anon {base >> 20} MiB)", flush=True)
                return
            except OSError:  # EBUSY: usage above the new limit could not be reclaimed yet
                limit += 8 << 20
        self.notes.append("could not lower the memory cgroup limit")

    def _hog(self, args: list[str]) -> None:
        # A sibling of the server (a child of this wrapper), so outside the recorded tree.
        self.hogs.append(subprocess.Popen(_cli() + ["demo", "hog", *args]))

    # Teardown ----------------------------------------------------------------------------------
    def server_alive(self) -> bool:
        if self.server_pid is None:
            return False
        try:
            os.kill(self.server_pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        try:  # a zombie (dead, not reaped) counts as gone
            state = Path(f"/proc/{self.server_pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            return state != "Z"
        except (OSError, IndexError):
            return False

    def stop(self) -> int | None:
        for h in self.hogs:
            if h.poll() is None:
                h.send_signal(signal.SIGTERM)
        for h in self.hogs:
            try:
                h.wait(timeout=5)
            except subprocess.TimeoutExpired:
                h.kill()
                h.wait()
        if self.server_pid and self.server_alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.server_pid, signal.SIGTERM)
        rc = None
        if self.top is not None:
            try:
                rc = self.top.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.top.send_signal(signal.SIGINT)
                try:
                    rc = self.top.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    self.top.kill()
                    rc = self.top.wait()
        self._remove_memcg()
        return rc

    def _remove_memcg(self) -> None:
        if self.memcg is None or not self.memcg.exists():
            return
        for _ in range(50):
            try:
                pids = (self.memcg / "cgroup.procs").read_text().split()
            except OSError:
                break
            for p in pids:
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(p), signal.SIGKILL)
            try:
                self.memcg.rmdir()
                return
            except OSError:
                time.sleep(0.1)
        self.notes.append(f"could not remove {self.memcg}")

    def cleanup(self) -> None:
        shutil.rmtree(self.run_dir, ignore_errors=True)


def _demo_dir() -> Path:
    DEMO_DIR.mkdir(parents=True, exist_ok=True)
    return DEMO_DIR


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(a: argparse.Namespace) -> int:
    if a.record and Path(a.record).exists() and any(Path(a.record).iterdir()):
        raise UsageError(f"{a.record} exists and is not empty; choose a new recording path")
    if a.incident != "none" and not 0 <= a.incident_at < a.duration:
        raise UsageError("--incident-at must fall inside --duration")
    if a.cpus is None and (os.cpu_count() or 1) > 1:
        a.cpus = [0]  # leave the other CPU(s) to the tracer; the cpu hog targets this one
    from autoglm_trace.demo.load import run_load
    from autoglm_trace.demo.server import ensure_weights

    ensure_weights()  # created here (by root, under sudo), read by a server that may not be root
    demo = Demo(a)
    report = None
    try:
        if a.incident in ("memory-pressure", "oom"):
            demo.make_memcg()
        demo.start_server()
        stop = threading.Event()
        t0 = time.monotonic()
        result: dict[str, Any] = {}
        loader = threading.Thread(target=lambda: result.update(r=run_load(demo.url, duration_s=a.duration,
                                  rate=a.rate, concurrency=a.concurrency, stop=stop, timeout_s=20)), daemon=True)
        loader.start()
        injected = a.incident == "none"
        while loader.is_alive():
            el = time.monotonic() - t0
            if not injected and el >= a.incident_at:
                demo.inject(min(a.duration - el, a.incident_for or float("inf")))
                injected = True
            if injected and a.incident == "oom" and not demo.server_alive():
                print(f"demo: the server (pid {demo.server_pid}) is gone: OOM-killed", flush=True)
                time.sleep(1.0)
                stop.set()
            loader.join(timeout=0.1)
        report = result.get("r")
    finally:
        rc = demo.stop()
        if report is not None:
            print(report.summary(demo.incident_wall))
        for n in demo.notes:
            print(f"demo: note: {n}", file=sys.stderr)
        demo.cleanup()
    if a.record:
        print(f"demo: recording in {a.record} (recorder exit status {rc})", flush=True)
        if not a.no_analyze:
            _analyze(a.record)
    return 0


def _analyze(rec: str) -> None:
    # Through the CLI, as a user would: the demo is a client of the tool, not part of it.
    print(f"demo: autoglm-trace analyze {rec}", flush=True)
    subprocess.run(_cli() + ["analyze", rec], check=False)
