"""A miniature serving engine that exposes its latency as vLLM or SGLang do, names and buckets copied
from their source, for tests of ``record --scrape`` + ``analyze`` without spans.

Metric names and bucket layouts:

* vLLM -- ``vllm/v1/metrics/loggers.py`` (vllm-project/vllm, PrometheusStatLogger.__init__): labels
  ``model_name``, ``engine``; ``vllm:time_to_first_token_seconds`` (22 bounds 0.001..2560),
  ``vllm:inter_token_latency_seconds`` (19 bounds 0.01..80), ``request_latency_buckets`` (21 bounds
  0.3..7680) for ``vllm:e2e_request_latency_seconds``, ``vllm:request_queue_time_seconds``,
  ``vllm:request_inference_time_seconds``, ``vllm:request_prefill_time_seconds``,
  ``vllm:request_decode_time_seconds``; gauges ``vllm:num_requests_running``,
  ``vllm:num_requests_waiting``, ``vllm:kv_cache_usage_perc``; counters ``vllm:num_preemptions``,
  ``vllm:prompt_tokens``, ``vllm:generation_tokens``, ``vllm:request_success``. ``--old-names`` serves
  the names older releases used (``vllm:gpu_cache_usage_perc``, ``vllm:time_per_output_token_seconds``).
* SGLang -- ``python/sglang/srt/metrics/collector.py`` (sgl-project/sglang, TokenizerMetricsCollector
  and SchedulerMetricsCollector; served with ``--enable-metrics``): ``sglang:time_to_first_token_seconds``
  (18 bounds 0.1..400), ``sglang:inter_token_latency_seconds`` (23 bounds 0.002..8),
  ``sglang:e2e_request_latency_seconds`` (22 bounds 0.1..2400), ``sglang:queue_time_seconds`` (36 bounds
  0.0..3000); gauges ``sglang:num_running_reqs``, ``sglang:num_queue_reqs``, ``sglang:token_usage``,
  ``sglang:num_retracted_reqs``; counters ``sglang:prompt_tokens_total``, ``sglang:generation_tokens_total``.

The work is real: one scheduler thread runs each request's prefill and decode steps as CPU loops on
its CPU, so a CPU hog beside it makes every phase measurably slower (and the queue longer).

    python engine_sim.py --engine vllm --port P --duration 20 [--cpu 0] [--rate 2] [--ready FILE]
"""

from __future__ import annotations

import argparse
import os
import queue
import random
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

VLLM_TTFT = [0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
             40.0, 80.0, 160.0, 640.0, 2560.0]
VLLM_ITL = [0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0]
VLLM_REQUEST = [0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0,
                480.0, 960.0, 1920.0, 7680.0]
SGLANG_TTFT = [0.1, 0.2, 0.4, 0.6, 0.8, 1, 2, 4, 6, 8, 10, 20, 40, 60, 80, 100, 200, 400]
SGLANG_E2E = [0.1, 0.2, 0.4, 0.6, 0.8, 1, 2, 4, 6, 8, 10, 20, 40, 60, 80, 100, 200, 400, 600, 1200, 1800, 2400]
SGLANG_ITL = [0.002, 0.004, 0.006, 0.008, 0.010, 0.015, 0.020, 0.025, 0.030, 0.035, 0.040, 0.060, 0.080, 0.100,
              0.200, 0.400, 0.600, 0.800, 1.000, 2.000, 4.000, 6.000, 8.000]
SGLANG_QUEUE = [0.0, 0.1, 0.2, 0.5, 1, 2, 3, 4, 5, 10, 15, 20, 30, 40, 50, 60, 70, 80, 90, 100, 200, 300, 400, 500,
                600, 700, 800, 900, 1000, 1200, 1400, 1600, 1800, 2000, 2500, 3000]
MODEL = "autoglm-phone-9b"


class Metrics:
    def __init__(self, engine: str, old_names: bool = False) -> None:
        r = self.registry = CollectorRegistry()
        self.engine = engine
        if engine == "vllm":
            lab, val = ["model_name", "engine"], (MODEL, "0")
            itl = "vllm:time_per_output_token_seconds" if old_names else "vllm:inter_token_latency_seconds"
            kv = "vllm:gpu_cache_usage_perc" if old_names else "vllm:kv_cache_usage_perc"

            def h(name: str, buckets: list[float]) -> Histogram:
                return Histogram(name, name, lab, buckets=buckets, registry=r).labels(*val)

            self.ttft = h("vllm:time_to_first_token_seconds", VLLM_TTFT)
            self.itl = h(itl, VLLM_ITL)
            self.e2e = h("vllm:e2e_request_latency_seconds", VLLM_REQUEST)
            self.queue = h("vllm:request_queue_time_seconds", VLLM_REQUEST)
            self.inference = h("vllm:request_inference_time_seconds", VLLM_REQUEST)
            self.prefill = h("vllm:request_prefill_time_seconds", VLLM_REQUEST)
            self.decode = h("vllm:request_decode_time_seconds", VLLM_REQUEST)
            self.running = Gauge("vllm:num_requests_running", "running", lab, registry=r).labels(*val)
            self.waiting = Gauge("vllm:num_requests_waiting", "waiting", lab, registry=r).labels(*val)
            self.kv = Gauge(kv, "kv", lab, registry=r).labels(*val)
            self.preempt = Counter("vllm:num_preemptions", "preemptions", lab, registry=r).labels(*val)
            self.gen = Counter("vllm:generation_tokens", "gen", lab, registry=r).labels(*val)
        else:
            lab, val = ["model_name"], (MODEL,)

            def h(name: str, buckets: list[float]) -> Histogram:
                return Histogram(name, name, lab, buckets=buckets, registry=r).labels(*val)

            self.ttft = h("sglang:time_to_first_token_seconds", SGLANG_TTFT)
            self.itl = h("sglang:inter_token_latency_seconds", SGLANG_ITL)
            self.e2e = h("sglang:e2e_request_latency_seconds", SGLANG_E2E)
            self.queue = h("sglang:queue_time_seconds", SGLANG_QUEUE)
            self.inference = self.prefill = self.decode = None
            self.running = Gauge("sglang:num_running_reqs", "running", lab, registry=r).labels(*val)
            self.waiting = Gauge("sglang:num_queue_reqs", "queue", lab, registry=r).labels(*val)
            self.kv = Gauge("sglang:token_usage", "token usage", lab, registry=r).labels(*val)
            self.preempt = None
            self.retracted = Gauge("sglang:num_retracted_reqs", "retracted", lab, registry=r).labels(*val)
            self.gen = Counter("sglang:generation_tokens_total", "gen", lab, registry=r).labels(*val)


def _spin(seconds: float) -> None:
    """Burn ``seconds`` of *CPU time* (not wall time): a hog sharing the CPU stretches it."""
    end = time.thread_time() + seconds
    x = 0
    while time.thread_time() < end:
        for _ in range(2000):
            x += 1


def serve(engine: str, port: int, duration: float, rate: float, prefill_s: float, token_s: float, tokens: int,
          ready: str | None, old_names: bool, seed: int) -> None:
    m = Metrics(engine, old_names)
    jobs: queue.Queue[float] = queue.Queue()
    stop = threading.Event()

    def scheduler() -> None:
        while not stop.is_set():
            try:
                arrived = jobs.get(timeout=0.1)
            except queue.Empty:
                continue
            m.waiting.dec()
            m.running.inc()
            start = time.monotonic()
            m.queue.observe(start - arrived)
            _spin(prefill_s)
            first = time.monotonic()
            m.ttft.observe(first - arrived)
            last = first
            for _ in range(tokens - 1):
                _spin(token_s)
                now = time.monotonic()
                m.itl.observe(now - last)
                last = now
            m.gen.inc(tokens)
            m.kv.set(min(1.0, 0.2 + 0.1 * jobs.qsize()))
            done = time.monotonic()
            m.e2e.observe(done - arrived)
            if m.prefill is not None:
                m.prefill.observe(first - start)
                m.decode.observe(done - first)
                m.inference.observe(done - start)
            m.running.dec()

    def arrivals() -> None:
        rng = random.Random(seed)
        while not stop.is_set():
            time.sleep(rng.expovariate(rate))
            m.waiting.inc()
            jobs.put(time.monotonic())

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *a: object) -> None:
            pass

        def do_GET(self) -> None:
            body = generate_latest(m.registry) if self.path == "/metrics" else b"ok"
            self.send_response(200 if self.path in ("/metrics", "/health") else 404)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    http = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    http.daemon_threads = True
    threading.Thread(target=http.serve_forever, daemon=True).start()
    threading.Thread(target=scheduler, name="scheduler", daemon=True).start()
    threading.Thread(target=arrivals, daemon=True).start()
    if ready:
        Path(ready).write_text(str(os.getpid()))
    time.sleep(duration)
    stop.set()
    http.shutdown()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--engine", choices=("vllm", "sglang"), default="vllm")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--duration", type=float, default=20)
    p.add_argument("--rate", type=float, default=1.5)
    p.add_argument("--prefill-ms", type=float, default=40)
    p.add_argument("--token-ms", type=float, default=12)
    p.add_argument("--tokens", type=int, default=24)
    p.add_argument("--cpu", type=int, default=None)
    p.add_argument("--ready")
    p.add_argument("--old-names", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    if a.cpu is not None:
        os.sched_setaffinity(0, [a.cpu])
    Path("/proc/self/comm").write_text("engine-sim")
    serve(a.engine, a.port, a.duration, a.rate, a.prefill_ms / 1e3, a.token_ms / 1e3, a.tokens, a.ready,
          a.old_names, a.seed)


if __name__ == "__main__":
    main()
