"""The flight recorder: a ring of recent rows, triggers, and snapshots written when they fire.

``FlightRecorder.tick`` is the Recorder's on_tick: it reads the rows that arrived since the previous
tick from the ring (tracer/ring.py), asks the triggers (triggers.py) what fired, captures the ring on
a trigger, and after the tail hands the snapshot to the writer (snapshots.py). Triggers during the
tail join that snapshot; after it a cool-down suppresses new ones (counted and logged) so an OOM
storm cannot fill the disk. ``run_ring`` runs a whole session from typed options (the command line
is parsed in tracer/commands/record.py).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from autoglm_trace import clock
from autoglm_trace.errors import WriteError
from autoglm_trace.printable import printable
from autoglm_trace.signals import human_bytes
from autoglm_trace.tracer.flight.snapshots import (
    Pending,
    SnapshotWriter,
    apply_retention,
    prepare_out_dir,
    snapshot_manifest,
    snapshot_tables,
)
from autoglm_trace.tracer.flight.triggers import DEFAULT_TRIGGERS, Threshold, Triggers
from autoglm_trace.tracer.ring import RingSink
from autoglm_trace.tracer.session import Recorder, RecordOptions, install_signal_handlers

# 24 MiB: the recorder (~95 MiB without the ring) stays under 150 MiB even while a snapshot's tail
# holds a second ring's worth (issue 16's bound); five minutes of a 2-CPU host's probes take ~13 MiB.
DEFAULT_RING_BYTES = 24 << 20
DEFAULT_TAIL_S = 10.0
DEFAULT_COOLDOWN_S = 60.0
RING_WATCH_NS = 1_000_000_000
# A status line in the log every so often (ring size, process RSS, snapshots): the journal then shows
# the service's memory over days. AUTOGLM_TRACE_FLIGHT_STATUS_S overrides it (benchmarks use 60).
STATUS_EVERY_S = 600.0


def log(msg: str) -> None:
    """One line on stderr. Under systemd (JOURNAL_STREAM set) the journal stamps the time."""
    msg = printable(msg)  # trigger details carry comms and span names from the target
    if os.environ.get("JOURNAL_STREAM"):
        line = f"autoglm-trace flight: {msg}"
    else:
        line = f"{datetime.now(timezone.utc).strftime('%Y-%m-%dT%H:%M:%SZ')} autoglm-trace flight: {msg}"
    try:
        print(line, file=sys.stderr, flush=True)
    except (OSError, ValueError):
        pass


@dataclass
class FlightOptions:
    """The flight recorder's options, checked (tracer/commands/record.py builds them from --ring ...)."""

    out_dir: Path
    ring_s: float
    ring_bytes: int = DEFAULT_RING_BYTES
    triggers: tuple[str, ...] = DEFAULT_TRIGGERS
    thresholds: list[Threshold] = field(default_factory=list)
    tail_s: float = DEFAULT_TAIL_S
    cooldown_s: float = DEFAULT_COOLDOWN_S
    keep: int | None = None
    keep_bytes: int | None = None
    export_parquet: Path | None = None  # each saved snapshot is also exported into this fleet dataset
    export_args: tuple[str, ...] = ()     # checked `export --parquet` options: --host, --build, --label


class FlightRecorder:
    """Triggers, snapshots and retention around a ring; ``tick(recorder)`` is the Recorder's on_tick."""

    def __init__(self, fo: FlightOptions, ring: RingSink | None = None) -> None:
        self.fo = fo
        self.ring = ring or RingSink(int(fo.ring_s * 1e9), fo.ring_bytes)
        self.cursor: dict[str, int] = {}
        self.triggers = Triggers(fo.triggers, fo.thresholds, self.ring)
        self.pending: Pending | None = None
        self.cooldown_until_ns = 0
        self.suppressed = 0
        self.signal_requested = threading.Event()
        self._drop_logged = 0
        self._full_logged = False
        self._errors: set[str] = set()
        self._started_logged = False
        self._next_ring_watch_ns = 0
        self._next_status_ns = 0
        try:
            self._status_every_s = float(os.environ.get("AUTOGLM_TRACE_FLIGHT_STATUS_S") or STATUS_EVERY_S)
        except ValueError:
            self._status_every_s = STATUS_EVERY_S
        self._watched = self.triggers.tables
        self.writer = SnapshotWriter(fo.out_dir, fo.keep, fo.keep_bytes, log, fo.export_parquet,
                                     fo.export_args)
        self.recorder: Recorder | None = None

    @property
    def saved(self) -> list[Path]:
        """Snapshots written so far."""
        return self.writer.saved

    @property
    def metrics(self) -> Any:
        return self.triggers.metrics

    # The triggers check at most once a second; tests (and a caller who wants every tick) reset these.
    @property
    def _next_threshold_ns(self) -> int:
        return self.triggers._next_threshold_ns

    @_next_threshold_ns.setter
    def _next_threshold_ns(self, v: int) -> None:
        self.triggers._next_threshold_ns = v

    @property
    def _next_spike_ns(self) -> int:
        return self.triggers._next_spike_ns

    @_next_spike_ns.setter
    def _next_spike_ns(self, v: int) -> None:
        self.triggers._next_spike_ns = v

    # Tick -------------------------------------------------------------------------------------
    def tick(self, rec: Recorder) -> None:
        """Runs on the sampling thread each interval. Never raises (the Recorder would swallow it)."""
        self.recorder = rec
        try:
            self._tick(rec)
        except Exception as e:  # noqa: BLE001
            key = f"{type(e).__name__}: {e}"
            if key not in self._errors:
                self._errors.add(key)
                log(f"internal error in the trigger loop (the recorder carries on): {key}")

    def _tick(self, rec: Recorder) -> None:
        now = clock.now_ns()
        if not self._started_logged:
            self._started_logged = True
            cols = rec.manifest.get("collectors") or {}
            for name, c in cols.items():
                if c.get("status") != "ok":
                    log(f"collector {name} {c.get('status')}: {c.get('reason')}")
            log(f"recording {rec.ctx.target.describe() if rec.ctx else '?'} into the ring; collectors running: "
                + (", ".join(n for n, c in cols.items() if c.get("status") == "ok") or "none"))
        new, cur = self.ring.since(self.cursor, self._watched)
        self.cursor.update(cur)
        fired = self.triggers.check(rec, new, now)
        if self.signal_requested.is_set():
            self.signal_requested.clear()
            if "signal" in self.fo.triggers:
                fired.append(("signal", "SIGUSR1 (on-demand snapshot)"))
        for kind, detail in fired:
            self.fire(kind, detail, now)
        if self.pending is not None and now >= self.pending.deadline_ns:
            self._finish_pending(now)
        if now >= self._next_ring_watch_ns:
            self._next_ring_watch_ns = now + RING_WATCH_NS
            self._watch_ring()

    # Snapshots --------------------------------------------------------------------------------
    def fire(self, kind: str, detail: str, now_ns: int | None = None, force: bool = False) -> None:
        """Start a snapshot (or join the one in its tail). ``force`` ignores the cool-down, as
        SIGUSR1 does."""
        now = now_ns if now_ns is not None else clock.now_ns()
        if self.pending is not None:
            self.pending.also.append({"kind": kind, "detail": detail, "ts_ns": now})
            log(f"trigger {kind}: {detail}; joins the snapshot being captured ({self.pending.kind})")
            return
        if now < self.cooldown_until_ns and kind != "signal" and not force:
            self.suppressed += 1
            log(f"trigger {kind}: {detail}; suppressed (cool-down for another "
                f"{(self.cooldown_until_ns - now) / 1e9:.0f} s, {self.suppressed} suppressed so far)")
            return
        captured, cursor = self.ring.capture()
        self.pending = Pending(kind, detail, now, captured, cursor, now + int(self.fo.tail_s * 1e9))
        log(f"trigger {kind}: {detail}; saving the last {self.fo.ring_s:g} s plus {self.fo.tail_s:g} s after it")

    def _finish_pending(self, now: int, cut_short: bool = False) -> Path | None:
        p = self.pending
        if p is None:
            return None
        self.pending = None
        self.cooldown_until_ns = p.trigger_ns + int(max(self.fo.cooldown_s, self.fo.tail_s) * 1e9)
        after, _ = self.ring.since(p.cursor)
        tables = snapshot_tables(p, after)
        rec = self.recorder
        base = rec.manifest if rec is not None and getattr(rec, "manifest", None) else {}
        live = rec is not None and rec.ctx is not None
        manifest = snapshot_manifest(base, p, tables, now, cut_short, self.ring.stats(), self.fo.ring_s,
                                     self.fo.ring_bytes, self.fo.tail_s,
                                     notes=list(rec.ctx.notes) if live else None,
                                     stats=rec.status() if live else None)
        path = self.writer.new_path(p.trigger_ns, p.kind, base.get("clock", {}).get("monotonic_to_wall_ns"))
        return path if self.writer.submit(path, manifest, tables) else None

    def _watch_ring(self) -> None:
        st = self.ring.stats()
        if st["dropped_rows"] > self._drop_logged and (self._drop_logged == 0 or st["dropped_rows"] >= 2 * self._drop_logged):
            log(f"ring size limit {human_bytes(self.fo.ring_bytes)} reached before {self.fo.ring_s:g} s: "
                f"{st['dropped_rows']} rows evicted early so far, holding {st['covered_ns'] / 1e9:.0f} s "
                "(raise --ring-bytes or shorten --ring)")
            self._drop_logged = st["dropped_rows"]
        now = clock.now_ns()
        if now >= self._next_status_ns:
            if self._next_status_ns:
                log(f"status: ring {st['covered_ns'] / 1e9:.0f} s / {human_bytes(st['bytes'])} "
                    f"(limit {human_bytes(self.fo.ring_bytes)}), {st['rows']} rows, {st['dropped_rows']} evicted early; "
                    f"process RSS {human_bytes(_self_rss())}; {len(self.saved)} snapshot(s) saved, "
                    f"{self.suppressed} suppressed")
            self._next_status_ns = now + int(self._status_every_s * 1e9)
        if not self._full_logged and st["covered_ns"] >= self.ring.duration_ns * 0.99:
            self._full_logged = True
            log(f"ring full: holding {st['covered_ns'] / 1e9:.0f} s in {human_bytes(st['bytes'])} "
                f"(limit {human_bytes(self.fo.ring_bytes)})")

    # End --------------------------------------------------------------------------------------
    def finish(self, rec: Recorder, manifest: dict[str, Any]) -> None:
        """After the recorder stopped: write a pending snapshot, catch a spawned target's bad exit,
        and wait for the writer."""
        now = clock.now_ns()
        if getattr(rec, "manifest", None):  # absent when the recorder failed before it started
            try:
                self._tick(rec)  # rows the last rounds emitted (the target's exit, a late OOM row)
            except Exception as e:  # noqa: BLE001
                log(f"internal error in the trigger loop: {e}")
        detail = self.triggers.final_exit(rec, manifest)
        if detail:
            # The session ends here: no storm to protect against, so the cool-down does not apply.
            self.fire("exit", detail, now, force=True)
        if self.pending is not None:
            self._finish_pending(clock.now_ns(), cut_short=clock.now_ns() < self.pending.deadline_ns)
        self.writer.close()


def _self_rss() -> int:
    try:
        with open("/proc/self/status") as f:
            return next((int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:")), 0)
    except OSError:
        return 0


class FlightSession(Recorder):
    """The Recorder as a flight recorder: collectors declared for it alone run too (in host mode the
    top processes by RSS, probes/collectors/toprss.py, so a snapshot shows the victim's growth)."""

    flight = True


def run_ring(fo: FlightOptions, opts: RecordOptions, extra_sinks: list[Any] | None = None) -> int:
    """``record --ring``: run until SIGTERM / SIGINT (or the duration), saving a snapshot per trigger.
    ``extra_sinks`` (a Prometheus exporter) receive every batch too; the recorder closes them."""
    prepare_out_dir(fo.out_dir)
    opts.output = fo.out_dir  # never written to by the Recorder (write_files=False)
    flight = FlightRecorder(fo)
    rec = FlightSession(opts, on_tick=flight.tick, sinks=[flight.ring, *(extra_sinks or [])], write_files=False)
    restore = install_signal_handlers(rec)
    prev_usr1 = signal.signal(signal.SIGUSR1, lambda *_: flight.signal_requested.set())
    for p in apply_retention(fo.out_dir, fo.keep, fo.keep_bytes):
        log(f"retention: deleted {p}")
    log(f"started (pid {os.getpid()}): ring {fo.ring_s:g} s / {human_bytes(fo.ring_bytes)}, triggers "
        f"{','.join(fo.triggers)}{' (' + '; '.join(t.text for t in fo.thresholds) + ')' if fo.thresholds else ''}, "
        f"tail {fo.tail_s:g} s, snapshots in {fo.out_dir}"
        + (f", keep {fo.keep}" if fo.keep else "") + (f", keep {human_bytes(fo.keep_bytes)}" if fo.keep_bytes else ""))
    manifest: dict[str, Any] = {}
    try:
        manifest = rec.run()
    finally:
        signal.signal(signal.SIGUSR1, prev_usr1)
        restore()
        if rec.ctx is not None and not manifest:
            manifest = getattr(rec, "manifest", {}) or {}
        flight.finish(rec, manifest or {})
    log(f"stopped ({manifest.get('stop_reason') or 'error'}): {len(flight.saved)} snapshot(s) saved, "
        f"{flight.suppressed} trigger(s) suppressed by the cool-down")
    if manifest.get("error"):
        raise WriteError(manifest["error"])
    return 0
