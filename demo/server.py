"""The bundled demo inference server: a small HTTP server that does the work of an LLM server on the
CPU, so autoglm-trace has something realistic to record without a GPU.

* Model: a tiny mixture-of-experts decoder (``layers`` x attention + ``experts`` FFN experts) whose
  weights live in a file that is memory-mapped, as serving engines map their checkpoints. Each token
  routes to one expert per layer, so the working set of the file is touched at random: under memory
  pressure its pages are evicted and come back as major faults.
* KV cache per request, grown as tokens are produced: ``2 x layers x tokens x hidden x 4`` bytes
  (float32). Finished requests' caches go to a prefix cache that is evicted LRU to a budget --
  unless the ``leak`` switch is on, then nothing is ever evicted and RSS climbs.
* ``workers`` decode threads take requests from a queue (queueing time is real); HTTP handler threads
  wait for them. Each request is a span (``autoglm_trace.span``) with time-to-first-token marked.
* ``/generate`` (POST JSON ``{"prompt_tokens": n, "max_tokens": m}``), ``/metrics`` (Prometheus text,
  vLLM names, via prometheus_client), ``/health`` (JSON with the pid), ``/admin/incident`` (POST JSON
  ``{"kind": "leak"}``: switch trouble on at run time).
* A request journal (JSON Lines: start, end in wall seconds, tokens) is appended and fsync'ed per
  request, as a write-ahead request log would be: I/O latency on its disk shows in request latency,
  and the journal is a latency log ``analyze --latency`` can read.
"""

from __future__ import annotations

import os

# One BLAS thread: the demo must leave CPU for the tracer on a small box (set before numpy loads).
for _v in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import contextlib  # noqa: E402
import fcntl  # noqa: E402
import json  # noqa: E402
import queue  # noqa: E402
import signal  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from collections import OrderedDict  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest  # noqa: E402

from autoglm_trace.demo import trouble as demo_trouble  # noqa: E402
from autoglm_trace.span_client import span  # noqa: E402

MODEL_NAME = "autoglm-demo"
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 1.5, 2.0, 2.5, 5.0,
                   10.0, 20.0, 40.0)
TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5,
                 1.0, 2.5)
INCIDENTS_IN_SERVER = ("leak", "oom", *demo_trouble.KINDS)


@dataclass
class ModelConfig:
    layers: int = 4
    hidden: int = 256
    experts: int = 8
    ffn: int = 1024
    vocab: int = 4096

    def n_floats(self) -> int:
        h, f = self.hidden, self.ffn
        per_layer = h * 3 * h + h * h + h * self.experts + self.experts * (h * f + f * h)
        return self.vocab * h + self.layers * per_layer

    @property
    def kv_bytes_per_token(self) -> int:
        return 2 * self.layers * self.hidden * 4


class TinyMoE:
    """Weights memory-mapped from ``path`` (created once, deterministic)."""

    def __init__(self, path: Path, cfg: ModelConfig, drop_cache: bool = False) -> None:
        self.cfg = cfg
        n = cfg.n_floats()
        if not _weights_ready(path, n):
            self._create(path, n)
        if drop_cache:
            # Page cache is charged to the cgroup that first faults a page in: drop what an earlier
            # run cached so this server's memory cgroup owns (and can be squeezed on) its weights.
            drop_page_cache(path)
        self.mm = np.memmap(path, dtype=np.float32, mode="r", shape=(n,))
        h, f, e = cfg.hidden, cfg.ffn, cfg.experts
        off = 0

        def take(*shape: int) -> np.ndarray:
            nonlocal off
            size = int(np.prod(shape))
            a = self.mm[off : off + size].reshape(shape)
            off += size
            return a

        self.emb = take(cfg.vocab, h)
        self.layers = []
        for _ in range(cfg.layers):
            self.layers.append({
                "wqkv": take(h, 3 * h), "wo": take(h, h), "router": take(h, e),
                "w1": take(e, h, f), "w2": take(e, f, h),
            })
        self.scale = 1.0 / np.sqrt(h)

    @staticmethod
    def _create(path: Path, n: int) -> None:
        """Write the weights once, however many servers start at the same time: creators take an
        flock beside the file and look again under it; the data goes to a temp file of this process's
        own in the same directory, renamed into place whole (0644: a server running as another user
        only reads it)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = os.open(path.with_name(path.name + ".lock"), os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW,
                       0o644)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if _weights_ready(path, n):
                return  # made by another process while we waited
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
            try:
                with os.fdopen(fd, "wb") as f:
                    rng = np.random.default_rng(0)
                    left = n
                    while left:
                        k = min(left, 1 << 22)
                        f.write((rng.standard_normal(k, dtype=np.float32) * 0.05).tobytes())
                        left -= k
                os.chmod(tmp, 0o644)
                os.replace(tmp, path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
        finally:
            os.close(lock)

    def _layer(self, i: int, x: np.ndarray, cache: KVCache) -> np.ndarray:
        """x: (T, H) new positions; appends their K/V to the cache and attends causally."""
        w = self.layers[i]
        h = self.cfg.hidden
        qkv = x @ w["wqkv"]
        q, k, v = qkv[:, :h], qkv[:, h : 2 * h], qkv[:, 2 * h :]
        start = cache.append(i, k, v)
        keys, vals = cache.k[i, : start + len(x)], cache.v[i, : start + len(x)]
        att = (q @ keys.T) * self.scale
        if len(x) > 1:  # causal mask inside the new block
            mask = np.triu(np.ones((len(x), len(x)), dtype=bool), 1)
            att[:, start:][mask] = -1e9
        att = np.exp(att - att.max(axis=1, keepdims=True))
        att /= att.sum(axis=1, keepdims=True)
        x = x + (att @ vals) @ w["wo"]
        # Route the block to one expert (per token in decode): a random-looking slice of the file.
        e = int(np.argmax(x.mean(axis=0) @ w["router"]))
        x = x + np.maximum(x @ w["w1"][e], 0.0) @ w["w2"][e]
        return x / (np.linalg.norm(x, axis=1, keepdims=True) + 1e-6)

    def prefill(self, tokens: np.ndarray, cache: KVCache) -> int:
        x = np.asarray(self.emb[tokens])
        for i in range(self.cfg.layers):
            x = self._layer(i, x, cache)
        cache.n += len(tokens)
        return int(np.argmax(self.emb @ x[-1]))

    def decode(self, token: int, cache: KVCache) -> int:
        x = np.asarray(self.emb[token : token + 1])
        for i in range(self.cfg.layers):
            x = self._layer(i, x, cache)
        cache.n += 1
        return int(np.argmax(self.emb @ x[0]))


def default_weights_path(cfg: ModelConfig) -> Path:
    workdir = Path(os.environ.get("AUTOGLM_DEMO_DIR", "/var/tmp/autoglm-demo"))
    return workdir / f"weights-{cfg.n_floats()}.bin"


def drop_page_cache(path: Path) -> None:
    """Evict ``path``'s pages from the page cache as far as the kernel lets us. POSIX_FADV_DONTNEED
    (mm/fadvise.c -> mapping_try_invalidate() -> mapping_evict_folio() in mm/truncate.c) leaves dirty
    folios, folios under writeback and folios some process maps: so write back first; a page another
    process maps stays, charged to whichever memory cgroup first faulted it in. A server whose
    weights must be charged to its own cgroup needs a file nobody else maps (``demo run`` gives it a
    private copy)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def _weights_ready(path: Path, n: int) -> bool:
    try:
        return path.stat().st_size == n * 4
    except FileNotFoundError:
        return False


def ensure_weights(cfg: ModelConfig | None = None) -> Path:
    """Create the weights file if missing."""
    cfg = cfg or ModelConfig()
    path = default_weights_path(cfg)
    if not _weights_ready(path, cfg.n_floats()):
        TinyMoE._create(path, cfg.n_floats())
    return path


class KVCache:
    """Per request, per layer K and V rows, grown by doubling (``2 x layers x tokens x hidden x 4``)."""

    def __init__(self, layers: int, hidden: int, capacity: int = 64) -> None:
        self.k = np.empty((layers, capacity, hidden), np.float32)
        self.v = np.empty((layers, capacity, hidden), np.float32)
        self.n = 0

    def append(self, layer: int, k: np.ndarray, v: np.ndarray) -> int:
        start = self.n
        need = start + len(k)
        if need > self.k.shape[1]:
            cap = max(need, 2 * self.k.shape[1])
            for name in ("k", "v"):
                old = getattr(self, name)
                new = np.empty((old.shape[0], cap, old.shape[2]), np.float32)
                new[:, :start] = old[:, :start]
                setattr(self, name, new)
        self.k[layer, start:need] = k
        self.v[layer, start:need] = v
        return start

    @property
    def nbytes(self) -> int:
        return self.k.nbytes + self.v.nbytes


@dataclass
class Job:
    prompt_tokens: int
    max_tokens: int
    span: Any
    enqueued: float
    done: threading.Event
    first_token_at: float | None = None
    output_tokens: int = 0
    error: str | None = None


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        lab = ["model_name"]
        self.e2e = Histogram("vllm:e2e_request_latency_seconds", "End-to-end request latency", lab,
                             buckets=LATENCY_BUCKETS, registry=r).labels(MODEL_NAME)
        self.ttft = Histogram("vllm:time_to_first_token_seconds", "Time to first token", lab,
                              buckets=LATENCY_BUCKETS, registry=r).labels(MODEL_NAME)
        self.itl = Histogram("vllm:inter_token_latency_seconds", "Inter-token latency", lab,
                             buckets=TOKEN_BUCKETS, registry=r).labels(MODEL_NAME)
        self.queue = Histogram("vllm:request_queue_time_seconds", "Time waiting for a worker", lab,
                               buckets=LATENCY_BUCKETS, registry=r).labels(MODEL_NAME)
        # vLLM's per-request phase histograms (vllm/v1/metrics/loggers.py): prefill, decode, both.
        self.prefill = Histogram("vllm:request_prefill_time_seconds", "Prefill time", lab,
                                 buckets=LATENCY_BUCKETS, registry=r).labels(MODEL_NAME)
        self.decode = Histogram("vllm:request_decode_time_seconds", "Decode time", lab,
                                buckets=LATENCY_BUCKETS, registry=r).labels(MODEL_NAME)
        self.inference = Histogram("vllm:request_inference_time_seconds", "Prefill + decode time", lab,
                                   buckets=LATENCY_BUCKETS, registry=r).labels(MODEL_NAME)
        self.running = Gauge("vllm:num_requests_running", "Requests decoding", lab, registry=r).labels(MODEL_NAME)
        self.waiting = Gauge("vllm:num_requests_waiting", "Requests queued", lab, registry=r).labels(MODEL_NAME)
        self.kv_usage = Gauge("vllm:kv_cache_usage_perc", "KV cache bytes in use / budget (1 = full)", lab,
                              registry=r).labels(MODEL_NAME)
        self.prompt = Counter("vllm:prompt_tokens", "Prompt tokens processed", lab, registry=r).labels(MODEL_NAME)
        self.gen = Counter("vllm:generation_tokens", "Tokens generated", lab, registry=r).labels(MODEL_NAME)
        self.success = Counter("vllm:request_success", "Finished requests", lab + ["finished_reason"], registry=r)


class DemoServer:
    def __init__(self, host: str = "127.0.0.1", port: int = 0, workers: int = 2, model: ModelConfig | None = None,
                 weights: Path | None = None, journal: Path | None = None, journal_fsync: bool = True,
                 kv_budget_bytes: int = 4 << 20, drop_cache: bool = False) -> None:
        self.cfg = model or ModelConfig()
        self.weights_path = weights or default_weights_path(self.cfg)
        self.model = TinyMoE(self.weights_path, self.cfg, drop_cache)
        self.journal_path = journal
        self.journal_fsync = journal_fsync
        self._journal = open(journal, "a", buffering=1) if journal else None  # noqa: SIM115
        self._journal_lock = threading.Lock()
        self.metrics = Metrics()
        self.jobs: queue.Queue[Job | None] = queue.Queue()
        self.kv_budget = kv_budget_bytes
        self.prefix_cache: OrderedDict[int, KVCache] = OrderedDict()
        self._kv_live = 0
        self._kv_lock = threading.Lock()
        self._seq = 0
        self.leak = False
        # Taken briefly by every decode step (the scheduler's bookkeeping): the lock-holder trouble
        # holds it for long.
        self.step_lock = threading.Lock()
        self.steps = 0
        self.troubles: list[threading.Event] = []  # one stop event per trouble started (demo_trouble)
        self.children: list[Any] = []
        self.incidents: list[tuple[float, str]] = []
        self.workers = [threading.Thread(target=self._worker, name=f"decode-{i}", daemon=True) for i in range(workers)]
        self.http = ThreadingHTTPServer((host, port), self._handler())
        self.http.daemon_threads = True
        self.port = self.http.server_address[1]

    # Lifecycle ---------------------------------------------------------------------------------
    def serve_forever(self) -> None:
        for w in self.workers:
            w.start()
        try:
            self.http.serve_forever(poll_interval=0.2)
        finally:
            demo_trouble.stop_all(self)
            for _ in self.workers:
                self.jobs.put(None)
            self.http.server_close()
            if self._journal:
                self._journal.close()

    def shutdown(self) -> None:
        threading.Thread(target=self.http.shutdown, daemon=True).start()

    def set_incident(self, kind: str, duration_s: float | None = None) -> None:
        if kind not in INCIDENTS_IN_SERVER:
            raise ValueError(f"the server itself injects {', '.join(INCIDENTS_IN_SERVER)}, not {kind!r}")
        self.incidents.append((time.time(), kind))
        if kind in demo_trouble.KINDS:
            print(f"demo-server: incident {kind!r} on: {demo_trouble.start(kind, self, duration_s)}", flush=True)
            return
        self.leak = True
        print(f"demo-server: incident {kind!r} on: finished requests' KV caches are never evicted", flush=True)

    # Work --------------------------------------------------------------------------------------
    def _kv_update(self, delta: int) -> None:
        with self._kv_lock:
            self._kv_live += delta
            self.metrics.kv_usage.set(self._kv_live / self.kv_budget)

    def _retire(self, cache: KVCache) -> None:
        """A finished request's cache goes to the prefix cache; LRU eviction keeps it within budget
        (the leak switch disables eviction: the bug the demo injects)."""
        with self._kv_lock:
            self._seq += 1
            self.prefix_cache[self._seq] = cache
            evicted = 0
            while not self.leak and self.prefix_cache and self._kv_live > self.kv_budget:
                _, old = self.prefix_cache.popitem(last=False)
                evicted += old.nbytes
                self._kv_live -= old.nbytes
            self.metrics.kv_usage.set(self._kv_live / self.kv_budget)

    def _worker(self) -> None:
        rng = np.random.default_rng(threading.get_native_id())
        while True:
            job = self.jobs.get()
            if job is None:
                return
            self.metrics.waiting.dec()
            self.metrics.running.inc()
            self.metrics.queue.observe(time.monotonic() - job.enqueued)
            try:
                self._run(job, rng)
            except Exception as e:  # a request fails, the server lives on
                job.error = f"{type(e).__name__}: {e}"
            finally:
                self.metrics.running.dec()
                job.done.set()

    def _run(self, job: Job, rng: np.random.Generator) -> None:
        cache = KVCache(self.cfg.layers, self.cfg.hidden)
        before = 0
        started = time.monotonic()
        try:
            prompt = rng.integers(0, self.cfg.vocab, job.prompt_tokens)
            tok = self.model.prefill(prompt, cache)
            job.first_token_at = time.monotonic()
            job.span.first_token()
            self.metrics.prompt.inc(job.prompt_tokens)
            self.metrics.ttft.observe(job.first_token_at - job.enqueued)
            job.output_tokens = 1
            last = job.first_token_at
            for _ in range(job.max_tokens - 1):
                tok = self.model.decode(tok, cache)
                with self.step_lock:
                    self.steps += 1
                now = time.monotonic()
                self.metrics.itl.observe(now - last)
                last = now
                job.output_tokens += 1
                grown = cache.nbytes - before
                if grown:
                    self._kv_update(grown)
                    before = cache.nbytes
            self.metrics.gen.inc(job.output_tokens)
            done = time.monotonic()
            self.metrics.prefill.observe(job.first_token_at - started)
            self.metrics.decode.observe(done - job.first_token_at)
            self.metrics.inference.observe(done - started)
        finally:
            grown = cache.nbytes - before
            if grown:
                self._kv_update(grown)
            self._retire(cache)

    def generate(self, prompt_tokens: int, max_tokens: int) -> dict[str, Any]:
        wall0 = time.time()
        t0 = time.monotonic()
        with span("generate", prompt_tokens=prompt_tokens, model=MODEL_NAME) as s:
            job = Job(prompt_tokens, max_tokens, s, t0, threading.Event())
            self.metrics.waiting.inc()
            self.jobs.put(job)
            job.done.wait()
            s.set(output_tokens=job.output_tokens)
            if job.error:
                s.fail()
            self._write_journal(wall0, job)
        e2e = time.monotonic() - t0
        self.metrics.e2e.observe(e2e)
        self.metrics.success.labels(MODEL_NAME, "error" if job.error else "length").inc()
        return {"output_tokens": job.output_tokens, "latency_s": e2e,
                "ttft_s": None if job.first_token_at is None else job.first_token_at - t0, "error": job.error}

    def _write_journal(self, wall0: float, job: Job) -> None:
        if self._journal is None:
            return
        line = json.dumps({"start": round(wall0, 6), "end": round(time.time(), 6), "name": "generate",
                           "prompt_tokens": job.prompt_tokens, "output_tokens": job.output_tokens,
                           "ok": job.error is None})
        with self._journal_lock:
            self._journal.write(line + "\n")
            self._journal.flush()
            if self.journal_fsync:
                os.fsync(self._journal.fileno())

    # HTTP --------------------------------------------------------------------------------------
    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, code: int, body: bytes, ctype: str = "application/json") -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _json(self) -> dict[str, Any]:
                n = int(self.headers.get("Content-Length") or 0)
                if n > 1 << 20:
                    raise ValueError("body too large")
                data = json.loads(self.rfile.read(n) or b"{}")
                if not isinstance(data, dict):
                    raise ValueError("a JSON object is expected")
                return data

            def do_GET(self) -> None:
                if self.path == "/metrics":
                    self._send(200, generate_latest(server.metrics.registry), "text/plain; version=0.0.4")
                elif self.path == "/health":
                    self._send(200, json.dumps({"ok": True, "pid": os.getpid(), "leak": server.leak,
                                                "kv_live_bytes": server._kv_live,
                                                "prefix_cache_entries": len(server.prefix_cache)}).encode())
                else:
                    self._send(404, b'{"error": "not found"}')

            def do_POST(self) -> None:
                try:
                    data = self._json()
                except (ValueError, UnicodeDecodeError) as e:
                    self._send(400, json.dumps({"error": str(e)}).encode())
                    return
                if self.path == "/generate":
                    try:
                        p = int(data.get("prompt_tokens", 128))
                        m = int(data.get("max_tokens", 32))
                        if not (1 <= p <= 8192 and 1 <= m <= 4096):
                            raise ValueError
                    except (TypeError, ValueError):
                        self._send(400, b'{"error": "prompt_tokens 1..8192 and max_tokens 1..4096 expected"}')
                        return
                    out = server.generate(p, m)
                    self._send(500 if out["error"] else 200, json.dumps(out).encode())
                elif self.path == "/admin/incident":
                    try:
                        dur = data.get("duration_s")
                        server.set_incident(str(data.get("kind")), float(dur) if dur is not None else None)
                    except ValueError as e:
                        self._send(400, json.dumps({"error": str(e)}).encode())
                        return
                    self._send(200, b'{"ok": true}')
                else:
                    self._send(404, b'{"error": "not found"}')

        return Handler


def join_memcg(path: str) -> None:
    """Move this process into a v1 memory cgroup (needs root or a delegated cgroup)."""
    with open(os.path.join(path, "cgroup.procs"), "w") as f:
        f.write(str(os.getpid()))


def run_server(port: int = 0, workers: int = 2, journal: str | None = None, memcg: str | None = None,
               cpus: list[int] | None = None, incident: str = "none", incident_at: float | None = None,
               duration: float | None = None, ready_file: str | None = None, kv_budget_mb: int = 4,
               drop_cache: bool = False, weights: str | None = None) -> int:
    """Run until SIGTERM / SIGINT / ``duration``. Prints one line with the URL when ready."""
    from autoglm_trace.demo.hog import set_comm

    set_comm("demo-server")  # what the kernel's comm (and the recording) calls this process
    if memcg:
        join_memcg(memcg)  # first: the weights' page cache and every KV cache are charged there
    if cpus:
        os.sched_setaffinity(0, cpus)
    srv = DemoServer(port=port, workers=workers, journal=Path(journal) if journal else None,
                     weights=Path(weights) if weights else None, kv_budget_bytes=kv_budget_mb << 20,
                     drop_cache=drop_cache)

    def stop(*_a: Any) -> None:
        srv.shutdown()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    if incident in INCIDENTS_IN_SERVER and incident_at is not None:
        t = threading.Timer(incident_at, srv.set_incident, args=(incident,))
        t.daemon = True
        t.start()
    if duration:
        t = threading.Timer(duration, srv.shutdown)
        t.daemon = True
        t.start()
    url = f"http://127.0.0.1:{srv.port}"
    print(f"demo-server: pid {os.getpid()} serving on {url} (weights {srv.weights_path}, "
          f"{srv.cfg.n_floats() * 4 >> 20} MiB mmapped)", flush=True)
    if ready_file:
        Path(ready_file).write_text(json.dumps({"url": url, "pid": os.getpid()}))
    srv.serve_forever()
    return 0
