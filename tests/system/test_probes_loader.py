"""bcc compiles in a short-lived loader process; the recorder holds only descriptors.

A fresh recorder-like process (the test process itself has imported bcc for the capability check)
starts the kernel probes on a child, and reports: the loader has exited, bcc is not imported and no
LLVM / clang library is mapped, the programs it holds are loaded in the kernel, and switches of the
child that happen *after* the loader exited arrive. After stop() the programs are gone.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time

import pytest

from autoglm_trace.probes import libbpf

pytestmark = [pytest.mark.root, pytest.mark.bpf]

SCRIPT = textwrap.dedent("""
    import json, os, subprocess, sys, time
    from autoglm_trace.probes import libbpf
    from autoglm_trace.probes.kernel import KernelProbes
    from autoglm_trace.collector import SessionContext
    from autoglm_trace.target import TargetTree

    child = subprocess.Popen([sys.executable, "-c",
        "import sys, time\\nsys.stdin.readline()\\nfor _ in range(200): time.sleep(0.001)\\n"],
        stdin=subprocess.PIPE, text=True)
    rows = {}
    def emit_batch(table, batch):
        rows[table] = rows.get(table, 0) + batch.num_rows
    def emit(table, rs):
        rows[table] = rows.get(table, 0) + len(rs)
    ctx = SessionContext(emit, None, emit_batch, TargetTree.for_pid(child.pid), is_root=True)
    k = KernelProbes({"families": ["sched", "proc"], "bucket_ms": 20})
    k.start(ctx)
    helper = k.bpf.helper_pid
    helper_gone = not os.path.exists(f"/proc/{helper}") or \\
        open(f"/proc/{helper}/stat").read().split(") ")[1][0] == "Z"
    maps = open("/proc/self/maps").read()
    held = sorted(libbpf.prog_stats(fd).prog_id for fd in k.bpf.progs.values())
    loaded = sorted(set(held) & libbpf.loaded_prog_ids())  # while held (after stop they go)
    kinds = sorted({kind for kind, _n, _fd in k.bpf.links})
    child.stdin.write("go\\n"); child.stdin.flush(); child.wait()
    time.sleep(0.1)
    k.sample(time.monotonic_ns())
    k.stop()
    print(json.dumps({"helper_gone": helper_gone, "bcc": "bcc" in sys.modules,
                      "llvm": "libLLVM" in maps or "libclang" in maps, "held": held,
                      "loaded": loaded, "kinds": kinds,
                      "rows": rows}))
""")


def test_recorder_holds_descriptors_only_and_attachments_outlive_the_loader():
    r = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["helper_gone"], "the loader process should have exited before events are read"
    assert not out["bcc"] and not out["llvm"], out
    assert out["held"] and out["loaded"] == out["held"], out
    assert "raw_tracepoint" in out["kinds"], out
    # The child slept 200 times after the loader exited: its switches were counted.
    assert out["rows"].get("sched", 0) > 0, out
    assert out["rows"].get("proc_events", 0) > 0, out
    # Closing the descriptors unloaded every program. The kernel frees a program after its last
    # reference drops through deferred work / RCU (kernel/bpf/syscall.c, __bpf_prog_put), so on a
    # busy box it can still be listed for a moment: wait for that, boundedly.
    deadline = time.monotonic() + 10
    while set(out["held"]) & libbpf.loaded_prog_ids() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not set(out["held"]) & libbpf.loaded_prog_ids()


def test_a_program_that_does_not_compile_is_one_line_from_the_loader():
    from autoglm_trace.probes import bpf_loader

    with pytest.raises(bpf_loader.LoadError) as e:
        bpf_loader.load("int broken(void *ctx) { return undefined_symbol; }", [], cflags=["-w"])
    assert "\n" not in str(e.value) and str(e.value), e.value
