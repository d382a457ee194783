"""The recorder: one session from target selection to a complete recording.

Order matters: the target of ``-- CMD`` is forked and held first (no threads exist yet), then the
writer and the collectors start (BPF filter seeded with the held child's pid), then the child is
released into exec with the environment the collectors announce. One sampling thread -- this one --
calls every collector each interval and flushes the writer at least once a second. Ctrl-C / SIGTERM
end the session cleanly: collectors drain, the manifest says ``complete: true``. A SIGKILLed recorder
leaves every table readable up to its last flush (see tracer/writer.py).

The recorder protects itself: it asks the OOM killer to spare it (oom_score_adj -1000 as root) so it
survives to write the kill it is watching, and its buffers are bounded (writer.max_buffered_rows,
per-collector limits).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from autoglm_trace import clock, procfs
from autoglm_trace.collector import Collector, CollectorUnavailable, Planned, SessionContext, Setup
from autoglm_trace.errors import TargetError, TraceError, WriteError
from autoglm_trace.probes.collectors import option_defaults, registry
from autoglm_trace.sinks import Sink
from autoglm_trace.target import TargetTree
from autoglm_trace.tracer import spawn
from autoglm_trace.tracer.fanout import FanOut
from autoglm_trace.tracer.keepoff import KeepOff
from autoglm_trace.tracer.manifest import new_manifest, wall_iso
from autoglm_trace.tracer.writer import RecordingWriter

FLUSH_EVERY_NS = 900_000_000  # checked each tick: every flush lands within a second
MANIFEST_EVERY_NS = 5_000_000_000
KEEPOFF_EVERY_NS = 1_000_000_000  # a server may pin itself after it starts
MAX_COLLECTOR_ERRORS = 20


@dataclass
class RecordOptions:
    """What to record and how: the session's own options, and every collector's option values
    (``collector_options``, by the ``dest`` its declaration gives: probes/collectors/)."""

    output: Path
    pid: int | None = None
    command: list[str] | None = None
    cgroup: str | None = None
    host: bool = False
    duration_s: float | None = None
    interval_ms: int = 100
    # Collector option values (missing ones take the declared default) and free-form extras that
    # every collector sees in ctx.options (e.g. "families" for the kernel probes).
    collector_options: dict[str, Any] = field(default_factory=dict)
    drop_privileges: bool = True

    def option(self, dest: str) -> Any:
        """A collector option's value, or its declared default."""
        if dest in self.collector_options:
            return self.collector_options[dest]
        return option_defaults().get(dest)

    def __getattr__(self, name: str) -> Any:
        # A collector's option reads like a field (opts.scrape_interval_s, opts.latency_log).
        copts = self.__dict__.get("collector_options")
        defaults = option_defaults()
        if copts is not None and (name in copts or name in defaults):
            return copts.get(name, defaults.get(name))
        raise AttributeError(name)

    def manifest_view(self) -> dict[str, Any]:
        hidden = {o.dest for spec in registry() for o in spec.options if not o.in_manifest}
        values = {**option_defaults(), **self.collector_options}
        return {
            "interval_ms": self.interval_ms,
            "duration_s": self.duration_s,
            **{k: v for k, v in values.items() if k not in hidden and _plain(v)},
        }


def _plain(v: Any) -> bool:
    return isinstance(v, (int, float, str, bool)) or (
        isinstance(v, list) and all(isinstance(x, (int, float, str, bool)) for x in v))


class Recorder:
    flight = False  # the flight recorder (tracer/flight) sets this: collectors it alone runs plan on it

    def __init__(self, opts: RecordOptions, on_tick: Callable[[Recorder], None] | None = None,
                 sinks: list[Sink] | None = None, write_files: bool = True) -> None:
        """``sinks`` receive every batch beside the file writer (ring, exporter, live view);
        ``write_files=False`` records to the sinks alone (flight recorder, ``top``)."""
        self.opts = opts
        self.write_files = write_files
        self.fanout = FanOut(None, sinks)
        self.on_tick = on_tick
        self.is_root = os.geteuid() == 0
        self.stop_reason: str | None = None
        self._stop = threading.Event()
        self.child: spawn.HeldChild | None = None
        self.collectors: list[Collector] = []
        self._planned_tables: dict[str, list[str]] = {}
        self.writer: RecordingWriter | None = None
        self.ctx: SessionContext | None = None
        self.started_ns = 0
        self.samples = 0
        self.collector_errors: dict[str, int] = {}
        self.exit_status: spawn.ExitStatus | None = None
        self.run_as = spawn.sudo_user() if opts.drop_privileges else None

    # Target ------------------------------------------------------------------------------------
    def _make_target(self) -> tuple[TargetTree, dict[str, Any]]:
        o = self.opts
        if o.command:
            self.child = spawn.HeldChild(o.command, run_as=self.run_as)
            t = TargetTree(mode="tree", root_pid=self.child.pid)
            t.add(self.child.pid)
            return t, {"mode": "command", "pid": self.child.pid, "comm": os.path.basename(o.command[0])[:15],
                       "command": o.command, "user": self.run_as[0] if self.run_as else os.geteuid()}
        if o.pid is not None:
            if o.pid <= 0 or not psutil.pid_exists(o.pid):
                raise TargetError(f"no process with pid {o.pid}")
            try:
                p = psutil.Process(o.pid)
                info = {"mode": "pid", "pid": o.pid, "comm": p.name(), "command": p.cmdline(), "user": p.uids().real}
            except psutil.NoSuchProcess:
                raise TargetError(f"process {o.pid} exited before recording started") from None
            except psutil.AccessDenied:
                info = {"mode": "pid", "pid": o.pid, "comm": None, "command": None, "user": None}
            return TargetTree.for_pid(o.pid), info
        if o.cgroup:
            from autoglm_trace.target import resolve_cgroup

            try:
                path = resolve_cgroup(o.cgroup)
            except FileNotFoundError:
                raise TargetError(f"no such cgroup: {o.cgroup}") from None
            return TargetTree.for_cgroup(path), {"mode": "cgroup", "cgroup": path, "pid": None, "comm": None, "command": None}
        return TargetTree.for_host(), {"mode": "host", "pid": None, "comm": None, "command": None}

    def setup(self) -> Setup:
        """What the collector declarations plan from (probes/collectors/)."""
        o = self.opts
        opts: dict[str, Any] = {**option_defaults(), **o.collector_options, "interval_ms": o.interval_ms}
        if self.run_as:
            opts.setdefault("target_uid", self.run_as[0])
            opts.setdefault("target_gid", self.run_as[1])
        host_mode = o.pid is None and not o.command and not o.cgroup
        return Setup(is_root=self.is_root, interval_ms=o.interval_ms, options=opts, flight=self.flight,
                     host_mode=host_mode)

    def _build_collectors(self) -> list[Planned]:
        setup = self.setup()
        wanted: list[Planned] = []
        for spec in registry():
            for name, factory in spec.plan(setup):
                self._planned_tables[name] = list(spec.tables)
                wanted.append((name, factory))
        return wanted

    # Run ---------------------------------------------------------------------------------------
    def request_stop(self, reason: str) -> None:
        if self.stop_reason is None:
            self.stop_reason = reason
        self._stop.set()

    def run(self) -> dict[str, Any]:
        o = self.opts
        target, target_info = self._make_target()
        manifest = new_manifest(target_info, o.manifest_view(), o.interval_ms * 1_000_000)
        self.manifest = manifest
        if self.write_files:
            try:
                # Given to the sudo user through fds as each file is created (tracer/writer.py).
                self.writer = RecordingWriter(o.output, manifest, owner=self.run_as)
            except TraceError:
                if self.child:
                    self.child.abandon()
                raise
            self.fanout.primary = self.writer
        self._protect_self()
        f = self.fanout
        self.ctx = ctx = SessionContext(
            emit_rows=f.emit, emit_columns_fn=f.emit_columns, emit_batch_fn=f.emit_batch,
            target=target, interval_ns=o.interval_ms * 1_000_000, is_root=self.is_root,
            options={**o.collector_options, "interval_ms": o.interval_ms},
        )
        f.on_sink_error = lambda sink, e: ctx.note(f"{type(sink).__name__} detached: {type(e).__name__}: {e}")
        try:
            self._start_collectors(ctx)
            env: dict[str, str] = {}
            for c in self.collectors:
                try:
                    env.update(c.target_env())
                except Exception as e:  # noqa: BLE001
                    ctx.note(f"{c.name}: target_env failed: {e}")
            if self.child is not None:
                self.child.release(env)
            self.started_ns = clock.now_ns()
            self._loop(ctx)
        except BaseException:
            if self.child is not None and self.child.status is None:
                self.child.kill(signal.SIGKILL)
                self.child.wait()
            self._finish(ctx, error=True)
            raise
        return self._finish(ctx)

    def _protect_self(self) -> None:
        if not self.is_root:
            return
        try:
            with open(procfs.proc_path("self", "oom_score_adj"), "w") as f:
                f.write("-1000")
        except OSError:
            pass

    def _start_collectors(self, ctx: SessionContext) -> None:
        # Every declared collector is in the manifest with the tables it owns, also when it does
        # not run: no reader has to guess a table's owner from its name.
        for spec in registry():
            self.manifest["collectors"][spec.name] = {"status": "off", "reason": spec.off_reason,
                                                      "tables": list(spec.tables)}
        for name, factory in self._build_collectors():
            entry: dict[str, Any]
            tables = self._planned_tables.get(name, [])
            if isinstance(factory, str):
                entry = {"status": "unavailable", "reason": factory, "tables": tables}
            else:
                try:
                    c = factory()
                    c.name = name  # two --scrape URLs are two collectors: keep their names apart
                    c.start(ctx)
                    self.collectors.append(c)
                    entry = {"status": "ok", "tables": list(c.tables)}
                    try:
                        entry.update(c.info() or {})
                    except Exception as e:  # noqa: BLE001
                        entry["info_error"] = str(e)
                except CollectorUnavailable as e:
                    entry = {"status": "unavailable", "reason": str(e), "tables": tables}
                except Exception as e:  # noqa: BLE001 - a broken collector must not stop the recording
                    entry = {"status": "failed", "reason": f"{type(e).__name__}: {e}", "tables": tables}
            self.manifest["collectors"][name] = entry
        if self.writer is not None:
            self.writer.write_manifest()

    def _loop(self, ctx: SessionContext) -> None:
        o = self.opts
        interval = o.interval_ms / 1000.0
        deadline = time.monotonic() + o.duration_s if o.duration_s else None
        last_flush = last_manifest = last_keepoff = clock.now_ns()
        next_tick = time.monotonic()
        target_gone_at: float | None = None
        keepoff = KeepOff() if ctx.target.mode != "host" else None
        while True:
            now = clock.now_ns()
            self._sample_all(now)
            if keepoff is not None and now - last_keepoff >= KEEPOFF_EVERY_NS:
                cpus = keepoff.check(ctx.target.pids())
                self.manifest.setdefault("recorder", {})["cpus"] = sorted(cpus) if cpus else None
                last_keepoff = now
            if now - last_flush >= FLUSH_EVERY_NS:
                self._flush()
                last_flush = now
            if now - last_manifest >= MANIFEST_EVERY_NS:
                self._refresh_manifest(ctx)
                last_manifest = now
            if self.on_tick is not None:
                try:
                    self.on_tick(self)
                except Exception:  # noqa: BLE001 - the display never stops the recording
                    pass
            if self._stop.is_set():
                break
            if deadline is not None and time.monotonic() >= deadline:
                self.request_stop("duration reached")
                break
            if self._target_gone(ctx):
                # One more round lets the probes drain the exit and the last buckets.
                if target_gone_at is None:
                    target_gone_at = time.monotonic()
                elif time.monotonic() - target_gone_at >= interval:
                    self.request_stop("target exited")
                    break
            next_tick += interval
            delay = next_tick - time.monotonic()
            if delay < -interval:  # we fell behind (a slow sample); do not try to catch up
                next_tick = time.monotonic()
                delay = 0
            if delay > 0:
                self._stop.wait(delay)

    def _target_gone(self, ctx: SessionContext) -> bool:
        if self.child is not None:
            return self.child.poll() is not None
        if ctx.target.mode in ("host", "cgroup"):
            return False
        root = ctx.target.root_pid
        if root is not None and psutil.pid_exists(root):
            try:
                return psutil.Process(root).status() == psutil.STATUS_ZOMBIE and not ctx.target.pids()
            except psutil.NoSuchProcess:
                pass
        return not ctx.target.alive

    def _sample_all(self, now: int) -> None:
        for c in list(self.collectors):
            try:
                c.sample(now)
            except WriteError:
                raise
            except Exception as e:  # noqa: BLE001
                n = self.collector_errors[c.name] = self.collector_errors.get(c.name, 0) + 1
                if n == 1 and self.ctx:
                    self.ctx.note(f"{c.name}: sample failed: {type(e).__name__}: {e}")
                if n >= MAX_COLLECTOR_ERRORS:
                    self.collectors.remove(c)
                    self.manifest["collectors"][c.name] = {
                        "status": "failed", "reason": f"stopped after {n} errors; last: {type(e).__name__}: {e}",
                        "tables": list(c.tables)}
                    try:
                        c.stop()
                    except Exception:  # noqa: BLE001
                        pass
        self.samples += 1

    def _flush(self) -> None:
        try:
            self.fanout.flush()
        except WriteError as e:
            self.request_stop("write failed")
            self.manifest["error"] = str(e)
            raise

    def _refresh_manifest(self, ctx: SessionContext) -> None:
        m = self.manifest
        m["notes"] = list(ctx.notes)
        m["stats"] = self.status()
        if self.writer is None:
            return
        m["tables"] = self.writer.rows()
        try:
            self.writer.write_manifest()
        except WriteError:
            pass

    def status(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for c in self.collectors:
            try:
                out[c.name] = c.status()
            except Exception:  # noqa: BLE001
                out[c.name] = {}
        return out

    def _finish(self, ctx: SessionContext, error: bool = False) -> dict[str, Any]:
        m = self.manifest
        w = self.writer
        # Stop the collectors while the target's exit is still being drained.
        for c in reversed(self.collectors):
            try:
                c.stop()
            except Exception as e:  # noqa: BLE001
                ctx.note(f"{c.name}: stop failed: {type(e).__name__}: {e}")
        if self.child is not None:
            if self.child.status is None and self.stop_reason in ("terminated", "hangup"):
                # We started the target, so a stop request for the recorder ends it too, as Ctrl-C
                # (which the terminal sends to both) does.
                self.child.kill(signal.SIGTERM)
            if self.child.status is None and self.stop_reason in ("interrupted", "terminated", "hangup"):
                # Give it a moment to exit so its exit status lands in the manifest.
                deadline = time.monotonic() + 3
                while self.child.poll() is None and time.monotonic() < deadline:
                    time.sleep(0.05)
            self.exit_status = self.child.poll()
        end = clock.now_ns()
        offset = m["clock"]["monotonic_to_wall_ns"]
        m["end_ns"] = end
        m["end_time"] = wall_iso(end + offset)
        m["duration_s"] = round((end - m["start_ns"]) / 1e9, 3)
        m["stop_reason"] = self.stop_reason or ("error" if error else "finished")
        t = m["target"]
        if self.exit_status is not None:
            t["exit_code"] = self.exit_status.exit_code
            t["signal"] = self.exit_status.signal
            t["rusage"] = self.exit_status.rusage
        elif self.child is not None:
            t["exit_code"] = None
            t["signal"] = None
            t["still_running"] = True
        if self.child is not None:
            t["stderr_tail"] = list(self.child.stderr_tail)
        m["notes"] = list(ctx.notes)
        m["stats"] = self.status()
        try:
            self.fanout.flush()
        except WriteError as e:
            m["error"] = str(e)
        self.fanout.close()
        if w is None:
            m["complete"] = not error
        if w is not None:
            try:
                w.close()
            except WriteError as e:
                m["error"] = m.get("error") or str(e)
            m["tables"] = w.rows()
            m["complete"] = not error and w.failed is None
            if w.failed:
                m["error"] = w.failed
            try:
                w.write_manifest()
            except WriteError:
                pass
            w.release()
        return m


def install_signal_handlers(rec: Recorder) -> Callable[[], None]:
    """Ctrl-C / SIGTERM / SIGHUP end the recording cleanly; a second Ctrl-C aborts at once."""
    previous = {}

    def handler(signum: int, _frame: Any) -> None:
        reason = {signal.SIGINT: "interrupted", signal.SIGTERM: "terminated", signal.SIGHUP: "hangup"}.get(
            signum, "signal")
        if rec._stop.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        rec.request_stop(reason)

    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        previous[s] = signal.signal(s, handler)

    def restore() -> None:
        for s, h in previous.items():
            signal.signal(s, h)

    return restore
