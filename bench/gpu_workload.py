"""The CUDA workload bench/gpu_check.sh records: grows its GPU memory in steps until CUDA runs out.

    python3 bench/gpu_workload.py LOG.jsonl [--steps 48] [--interval 0.5] [--max-seconds 150]

Each step allocates ~1/steps of the device's memory as a tensor, writes to it (so the pages are
committed) and appends a JSON line to LOG: the wall time, this pid, ``torch.cuda.memory_reserved()``
and ``memory_allocated()`` -- what gpu_check compares with NVML's per-process memory. The
``torch.OutOfMemoryError`` is re-raised, so the traceback reaches stderr (the recorder keeps its tail
and ``autoglm-trace oom`` reports a CUDA OOM from it) and the exit status is 1.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("log")
    ap.add_argument("--steps", type=int, default=48)
    ap.add_argument("--interval", type=float, default=0.5)
    ap.add_argument("--max-seconds", type=float, default=150.0)
    a = ap.parse_args()
    import torch

    dev = torch.device("cuda:0")
    torch.cuda.init()
    free, total = torch.cuda.mem_get_info(dev)
    chunk = max(64 << 20, total // a.steps)
    held = []
    t0 = time.monotonic()
    with open(a.log, "a") as log:
        def note(event: str) -> None:
            log.write(json.dumps({"wall_ns": time.time_ns(), "pid": os.getpid(), "event": event,
                                  "reserved": torch.cuda.memory_reserved(dev),
                                  "allocated": torch.cuda.memory_allocated(dev),
                                  "total": total, "free_at_start": free, "chunk": chunk}) + "\n")
            log.flush()

        note("start")
        try:
            while time.monotonic() - t0 < a.max_seconds:
                t = torch.empty(chunk // 4, dtype=torch.float32, device=dev)
                t.fill_(1.0)
                torch.cuda.synchronize(dev)
                held.append(t)
                note("grow")
                time.sleep(a.interval)
        except torch.cuda.OutOfMemoryError:
            note("oom")
            raise
    print(f"gpu_workload: no CUDA OOM after {a.max_seconds:.0f} s ({len(held)} x {chunk >> 20} MiB held)",
          file=sys.stderr)
    return 3


if __name__ == "__main__":
    sys.exit(main())
