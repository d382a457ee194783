"""Run the autoglm-trace CLI in this process and write its own peak memory at exit.

  python bench/recorder_peak.py OUT.json record ...

OUT.json gets VmHWM / VmRSS (bytes) of this process -- the recorder -- read from /proc/self/status
at interpreter exit, whether bcc was imported, and whether an LLVM library is mapped. Children (the
target, the BPF loader helper) are separate processes and are not counted.
"""

from __future__ import annotations

import atexit
import json
import sys
from pathlib import Path


def _dump(out: str) -> None:
    status = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, val = line.partition(":")
        if key in ("VmHWM", "VmRSS"):
            status[key] = int(val.split()[0]) * 1024
    maps = Path("/proc/self/maps").read_text()
    status["bcc_imported"] = "bcc" in sys.modules
    status["llvm_mapped"] = "libLLVM" in maps or "libclang" in maps
    Path(out).write_text(json.dumps(status))


def main() -> None:
    out = sys.argv.pop(1)
    atexit.register(_dump, out)
    from autoglm_trace.tracer.cli import entry

    sys.argv[0] = "autoglm-trace"
    entry()


if __name__ == "__main__":
    main()
