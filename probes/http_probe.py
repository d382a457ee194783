"""``record --probe URL [--probe-interval S]``: a synthetic request on an interval, for servers nobody
can modify. Each request is one ``spans`` row with source ``probe``: start and end on the monotonic
clock around the whole exchange (connect, send, status, body), ``ok`` false for a connection error,
timeout or HTTP status >= 400, with the time it took to fail. ``attrs`` holds the status and error.

GET by default; with ``body`` (e.g. a tiny completion request) it is a POST of that JSON.
"""

from __future__ import annotations

import json
import math
import threading
import time
from typing import Any

from autoglm_trace.collector import Collector, CollectorUnavailable, SessionContext

MAX_BODY = 1 << 20


class HttpProbe(Collector):
    name = "http_probe"
    tables = ("spans", "probe_stats")

    def __init__(self, url: str, interval_s: float = 1.0, timeout_s: float = 5.0,
                 body: str | bytes | dict | None = None, name: str = "probe") -> None:
        super().__init__()
        if not (interval_s > 0 and math.isfinite(interval_s)):
            raise ValueError("the probe interval must be a positive number of seconds")
        self.url = url
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        if isinstance(body, dict):
            body = json.dumps(body)
        self.body = body.encode() if isinstance(body, str) else body
        self.span_name = name
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.sent = 0
        self.failed = 0

    def start(self, ctx: SessionContext) -> None:
        self.ctx = ctx
        if not self.url.startswith(("http://", "https://")):
            raise CollectorUnavailable(f"--probe wants an http:// or https:// URL, not {self.url!r}")
        self._thread = threading.Thread(target=self._run, name="autoglm-http-probe", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.timeout_s + 1.0)

    def status(self) -> dict[str, Any]:
        return {"events": self.sent, "lost": 0}

    def info(self) -> dict[str, Any]:
        return {"url": self.url, "interval_s": self.interval_s, "timeout_s": self.timeout_s,
                "method": "POST" if self.body is not None else "GET"}

    def probe_once(self) -> dict[str, Any]:
        """Send one request; emit and return its span row."""
        import urllib.error
        import urllib.request  # here, not at import: http.client pulls in ssl / libcrypto (~4 MB RSS)

        assert self.ctx is not None
        headers = {"User-Agent": "autoglm-trace-probe"}
        if self.body is not None:
            headers["Content-Type"] = "application/json"
        req = urllib.request.Request(self.url, data=self.body, headers=headers,
                                     method="POST" if self.body is not None else "GET")
        status: int | None = None
        error: str | None = None
        nbytes = 0
        deadline_s = self.timeout_s
        start = time.monotonic_ns()
        try:
            with urllib.request.urlopen(req, timeout=deadline_s) as resp:
                status = resp.status
                while nbytes < MAX_BODY:
                    if (time.monotonic_ns() - start) / 1e9 > deadline_s:
                        raise TimeoutError
                    chunk = resp.read(65536)
                    if not chunk:
                        break
                    nbytes += len(chunk)
        except urllib.error.HTTPError as e:
            status, error = e.code, f"HTTP {e.code}"
        except urllib.error.URLError as e:
            error = "timeout" if isinstance(e.reason, TimeoutError) else f"connect: {e.reason}"
        except TimeoutError:
            error = "timeout"
        except (OSError, ValueError) as e:
            error = f"{type(e).__name__}: {e}"
        end = time.monotonic_ns()
        ok = error is None and status is not None and status < 400
        attrs: dict[str, Any] = {"url": self.url}
        if status is not None:
            attrs["status"] = status
        if error is not None:
            attrs["error"] = error
        attrs["bytes"] = nbytes
        row = {"ts_ns": start, "end_ns": end, "name": self.span_name, "source": "probe", "pid": None,
               "tid": None, "ttft_ns": None, "prompt_tokens": None, "output_tokens": None, "ok": ok,
               "attrs": json.dumps(attrs, sort_keys=True)}
        self.ctx.emit("spans", [row])
        self.sent += 1
        if not ok:
            self.failed += 1
        return row

    def _run(self) -> None:
        next_t = time.monotonic()
        while not self._stop.is_set():
            try:
                self.probe_once()
            except Exception as e:
                if self.ctx is not None:
                    self.ctx.note(f"probe {self.url}: {type(e).__name__}: {e}")
            next_t += self.interval_s
            delay = next_t - time.monotonic()
            if delay < 0:
                next_t, delay = time.monotonic(), 0
            if self._stop.wait(delay):
                break
