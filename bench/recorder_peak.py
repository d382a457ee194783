"""Run the autoglm-trace CLI in this process and write its own peak memory at exit.

  python bench/recorder_peak.py OUT.json record ...

OUT.json gets VmHWM / VmRSS (bytes) of this process -- the recorder -- read from /proc/self/status
at interpreter exit, whether bcc was imported, and whether an LLVM library is mapped. Children (the
target, the BPF loader helper) are separate processes and are not counted. ``record`` ends by
exec'ing its closing report in the same process (tracer/commands/record_report.py), which starts a
new memory image: the recording phase is written to OUT.json at the exec, and the report is run
through this wrapper too, writing OUT.json.report at its exit. The process's peak is the larger.
"""

from __future__ import annotations

import atexit
import json
import os
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


def _exec_through_wrapper(out: str):
    real = os.execv

    def execv(path, argv):  # noqa: ANN001, ANN202
        _dump(out)
        argv = list(argv)
        if argv[1:4] == ["-P", "-m", "autoglm_trace.tracer.cli"]:
            argv = [argv[0], "-P", __file__, out + ".report", *argv[4:]]
        real(path, argv)

    return execv


def main() -> None:
    out = sys.argv.pop(1)
    atexit.register(_dump, out)
    os.execv = _exec_through_wrapper(out)
    from autoglm_trace.tracer.cli import entry

    sys.argv[0] = "autoglm-trace"
    entry()


if __name__ == "__main__":
    main()
