"""``record --scrape URL``: poll a Prometheus /metrics endpoint (vLLM, SGLang, TGI, anything that
serves the text exposition format) and store every sample raw, cumulative as served, in
``scrape_samples``. Histogram deltas and windowed quantiles are derived when reading
(``analysis.serving_metrics.histogram_windows``), as the recording format stores counters raw.

Parsing is prometheus_client's own text parser (``text_string_to_metric_families``). Each scrape runs
on this collector's thread with a bounded time (connect + read under one deadline, body size capped),
so a hanging or garbage endpoint costs at most ``timeout_s`` per interval and shows up as a counted
error in ``probe_stats`` (probe ``scrape``) plus one note, never as a crash or a stalled recorder.
"""

from __future__ import annotations

import json
import math
import threading
import time
from typing import Any

from autoglm_trace.collector import Collector, CollectorUnavailable, SessionContext

MAX_BODY = 32 << 20
# Process / runtime metrics every client library adds: noise for latency analysis.
DEFAULT_SKIP_PREFIXES = ("python_gc_", "python_info", "process_")


class ScrapeError(Exception):
    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def fetch(url: str, timeout_s: float) -> str:
    """GET ``url`` with everything (connect, headers, body) inside one deadline."""
    import urllib.error
    import urllib.request  # here, not at import: http.client pulls in ssl / libcrypto (~4 MB RSS)

    deadline = time.monotonic() + timeout_s
    req = urllib.request.Request(url, headers={"Accept": "text/plain;version=0.0.4", "User-Agent": "autoglm-trace"})
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            chunks, size = [], 0
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise ScrapeError("timeout", f"no complete answer within {timeout_s:g} s")
                # The socket timeout bounds each read; the deadline bounds a server trickling bytes.
                if resp.fp is not None and getattr(resp.fp, "raw", None) is not None:
                    sock = getattr(resp.fp.raw, "_sock", None)
                    if sock is not None:
                        sock.settimeout(max(0.01, left))
                chunk = resp.read1(65536) if hasattr(resp, "read1") else resp.read(65536)
                if not chunk:
                    break
                size += len(chunk)
                if size > MAX_BODY:
                    raise ScrapeError("too_large", f"body larger than {MAX_BODY >> 20} MiB")
                chunks.append(chunk)
    except ScrapeError:
        raise
    except urllib.error.HTTPError as e:
        raise ScrapeError("http_error", f"HTTP {e.code} {e.reason}") from None
    except urllib.error.URLError as e:
        reason = e.reason
        if isinstance(reason, TimeoutError):
            raise ScrapeError("timeout", f"no answer within {timeout_s:g} s") from None
        raise ScrapeError("connect", f"cannot connect ({reason})") from None
    except TimeoutError:
        raise ScrapeError("timeout", f"no complete answer within {timeout_s:g} s") from None
    except (OSError, ValueError) as e:
        raise ScrapeError("connect", f"request failed ({e})") from None
    return b"".join(chunks).decode("utf-8", "replace")


def parse_samples(text: str, skip_prefixes: tuple[str, ...] = DEFAULT_SKIP_PREFIXES) -> list[tuple[str, str, float]]:
    """(sample name, canonical JSON labels, value) for every sample; raises ScrapeError('parse')."""
    # Here, not at import: prometheus_client's package imports its HTTP server side too.
    from prometheus_client.parser import text_string_to_metric_families

    out: list[tuple[str, str, float]] = []
    try:
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if skip_prefixes and s.name.startswith(skip_prefixes):
                    continue
                out.append((s.name, json.dumps(s.labels, sort_keys=True, separators=(",", ":")), float(s.value)))
    except (ValueError, TypeError, KeyError, IndexError) as e:
        raise ScrapeError("parse", f"not Prometheus text ({str(e)[:120]})") from None
    if not out and text.strip() and not text.lstrip().startswith("#"):
        raise ScrapeError("parse", "no samples in the answer")
    return out


class Scraper(Collector):
    name = "scrape"
    tables = ("scrape_samples", "probe_stats")

    def __init__(self, url: str, interval_s: float = 1.0, timeout_s: float = 2.0,
                 skip_prefixes: tuple[str, ...] = DEFAULT_SKIP_PREFIXES) -> None:
        super().__init__()
        if not (interval_s > 0 and math.isfinite(interval_s)):
            raise ValueError("the scrape interval must be a positive number of seconds")
        self.url = url
        self.interval_s = interval_s
        # A scrape never takes longer than the interval it runs in.
        self.timeout_s = min(timeout_s, max(0.05, interval_s))
        self.skip_prefixes = skip_prefixes
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.scrapes = 0
        self.errors: dict[str, int] = {}
        self.samples_total = 0
        self.last_error: str | None = None
        self.waiting = 0  # connection refusals before the first successful scrape
        self._refused: list[tuple[int, str]] = []  # refusals since the last answer, not yet judged

    def start(self, ctx: SessionContext) -> None:
        self.ctx = ctx
        if not self.url.startswith(("http://", "https://")):
            raise CollectorUnavailable(f"--scrape wants an http:// or https:// URL, not {self.url!r}")
        self._thread = threading.Thread(target=self._run, name="autoglm-scrape", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.timeout_s + 1.0)
        if self.ctx is not None and self.scrapes == 0 and self.waiting:
            self._error("connect", f"never answered in {self.waiting} attempts ({self.last_error})")
        if self.ctx is not None and self._refused and self._target_alive():
            self._judge_refusals()
        self._refused.clear()

    def status(self) -> dict[str, Any]:
        return {"events": self.scrapes, "lost": sum(self.errors.values())}

    def info(self) -> dict[str, Any]:
        return {"url": self.url, "interval_s": self.interval_s, "timeout_s": self.timeout_s,
                "scrapes": self.scrapes, "errors": dict(self.errors)}

    def scrape_once(self) -> int:
        """One scrape; emits rows and returns their count. Errors are counted, noted, never raised."""
        assert self.ctx is not None
        t0 = time.monotonic_ns()
        try:
            text = fetch(self.url, self.timeout_s)
            t1 = time.monotonic_ns()
            samples = parse_samples(text, self.skip_prefixes)
        except ScrapeError as e:
            if e.kind == "connect" and self.scrapes == 0:
                # A server started by `record -- CMD` is not listening yet: not a lost sample.
                # (stop() says so if it never came up.)
                self.waiting += 1
                self.last_error = str(e)
                return 0
            if e.kind == "connect":
                # Refused after it answered before: the server may be shutting down. Judge later --
                # lost if it answers again or is still alive at the end, not lost if it exited.
                self._refused.append((time.monotonic_ns(), str(e)))
                self.last_error = str(e)
                return 0
            self._error(e.kind, str(e))
            return 0
        # The engine read its counters somewhere inside the request: stamp the midpoint.
        ts = t0 + (t1 - t0) // 2
        n = len(samples)
        if n:
            self.ctx.emit_columns("scrape_samples", {
                "ts_ns": [ts] * n,
                "url": [self.url] * n,
                "metric": [s[0] for s in samples],
                "labels": [s[1] for s in samples],
                "value": [s[2] for s in samples],
            })
        self._judge_refusals()  # it answers again: the refusals in between were lost scrapes
        self.scrapes += 1
        self.samples_total += n
        self.ctx.emit("probe_stats", [{"ts_ns": ts, "probe": "scrape", "events": n, "lost": 0, "reason": None}])
        return n

    def _judge_refusals(self) -> None:
        for _ts, msg in self._refused:
            self._error("connect", msg)
        self._refused.clear()

    def _target_alive(self) -> bool:
        target = getattr(self.ctx, "target", None)
        if target is None or getattr(target, "mode", "host") == "host":
            return True
        target.refresh()
        return bool(target.alive)

    def _error(self, kind: str, message: str) -> None:
        assert self.ctx is not None
        self.errors[kind] = self.errors.get(kind, 0) + 1
        self.last_error = message
        self.ctx.emit("probe_stats", [{"ts_ns": time.monotonic_ns(), "probe": "scrape", "events": 0,
                                       "lost": 1, "reason": kind}])
        # ctx.note de-duplicates identical text: one note per kind of failure.
        self.ctx.note(f"scrape {self.url}: {kind} ({message}); failed scrapes are counted in probe_stats")

    def _run(self) -> None:
        next_t = time.monotonic()
        while not self._stop.is_set():
            try:
                self.scrape_once()
            except Exception as e:  # never let a surprise kill the thread silently
                self._error("internal", f"{type(e).__name__}: {e}")
            next_t += self.interval_s
            delay = next_t - time.monotonic()
            if delay < 0:  # fell behind (slow endpoint): skip, don't burst
                next_t = time.monotonic()
                delay = 0
            if self._stop.wait(delay):
                break

