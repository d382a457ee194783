"""Load generator for the demo server (or any server with the same ``/generate`` API).

Open loop: requests start at ``rate`` per second whatever the server's latency (as users do), with at
most ``concurrency`` in flight -- a request that finds every slot busy waits, and that wait counts in
its latency, as it would for a client. Stops after ``duration_s`` or ``max_requests``.
"""

from __future__ import annotations

import json
import random
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Result:
    start_wall: float
    latency_s: float
    ok: bool
    ttft_s: float | None = None
    error: str | None = None


@dataclass
class LoadReport:
    results: list[Result] = field(default_factory=list)
    duration_s: float = 0.0

    def quantile(self, q: float, since: float | None = None, until: float | None = None) -> float | None:
        lat = sorted(r.latency_s for r in self.results if r.ok and (since is None or r.start_wall >= since)
                     and (until is None or r.start_wall < until))
        if not lat:
            return None
        return lat[min(len(lat) - 1, int(q * len(lat)))]

    def summary(self, split_wall: float | None = None) -> str:
        n = len(self.results)
        ok = sum(r.ok for r in self.results)
        lines = [f"load: {n} requests in {self.duration_s:.1f} s, {ok} ok, {n - ok} failed"]

        def fmt(label: str, since: float | None, until: float | None) -> None:
            sel = [r for r in self.results if (since is None or r.start_wall >= since)
                   and (until is None or r.start_wall < until)]
            if not sel:
                return
            p50, p99 = self.quantile(0.5, since, until), self.quantile(0.99, since, until)
            bad = sum(not r.ok for r in sel)
            lines.append(f"  {label:<16} n={len(sel):<4} p50={_ms(p50)} p99={_ms(p99)} failed={bad}")

        if split_wall is None:
            fmt("all", None, None)
        else:
            fmt("before incident", None, split_wall)
            fmt("after incident", split_wall, None)
        errors: dict[str, int] = {}
        for r in self.results:
            if r.error:
                errors[r.error] = errors.get(r.error, 0) + 1
        for e, c in sorted(errors.items(), key=lambda kv: -kv[1])[:3]:
            lines.append(f"  error x{c}: {e}")
        return "\n".join(lines)


def _ms(v: float | None) -> str:
    return "   -   " if v is None else f"{v * 1000:6.0f}ms"


def one_request(url: str, prompt_tokens: int, max_tokens: int, timeout_s: float) -> Result:
    body = json.dumps({"prompt_tokens": prompt_tokens, "max_tokens": max_tokens}).encode()
    req = urllib.request.Request(url.rstrip("/") + "/generate", data=body,
                                 headers={"Content-Type": "application/json"}, method="POST")
    wall, t0 = time.time(), time.monotonic()
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            out = json.loads(resp.read())
        return Result(wall, time.monotonic() - t0, True, out.get("ttft_s"))
    except urllib.error.HTTPError as e:
        return Result(wall, time.monotonic() - t0, False, error=f"HTTP {e.code}")
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
        return Result(wall, time.monotonic() - t0, False, error=f"{type(reason).__name__}: {reason}"[:80])


def run_load(url: str, duration_s: float = 20.0, rate: float = 3.0, concurrency: int = 4,
             prompt_tokens: tuple[int, int] = (32, 128), max_tokens: tuple[int, int] = (8, 24),
             max_requests: int | None = None, timeout_s: float = 30.0, stop: threading.Event | None = None,
             seed: int = 1) -> LoadReport:
    rnd = random.Random(seed)
    report = LoadReport()
    slots = threading.Semaphore(concurrency)
    lock = threading.Lock()
    threads: list[threading.Thread] = []
    stop = stop or threading.Event()
    t_start = time.monotonic()
    next_t = t_start
    sent = 0

    def worker(p: int, m: int) -> None:
        try:
            r = one_request(url, p, m, timeout_s)
        finally:
            slots.release()
        with lock:
            report.results.append(r)

    while not stop.is_set() and time.monotonic() - t_start < duration_s:
        if max_requests is not None and sent >= max_requests:
            break
        delay = next_t - time.monotonic()
        if delay > 0 and stop.wait(delay):
            break
        next_t += rnd.expovariate(rate)  # Poisson arrivals
        if not slots.acquire(timeout=max(0.0, duration_s - (time.monotonic() - t_start))):
            break
        p, m = rnd.randint(*prompt_tokens), rnd.randint(*max_tokens)
        t = threading.Thread(target=worker, args=(p, m), daemon=True)
        t.start()
        threads.append(t)
        sent += 1
        threads = [x for x in threads if x.is_alive()]
    for t in threads:
        t.join(timeout=timeout_s)
    report.duration_s = time.monotonic() - t_start
    report.results.sort(key=lambda r: r.start_wall)
    return report


def main_load(args: Any) -> int:
    rep = run_load(args.url, duration_s=args.duration, rate=args.rate, concurrency=args.concurrency,
                   max_requests=args.requests)
    print(rep.summary())
    return 0 if rep.results and all(r.ok for r in rep.results) else 1
