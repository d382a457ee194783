"""Cost per context switch of the sched programs, measured in the kernel: BPF run time per program.

A pinned pipe ping-pong (both processes on one CPU: every round trip is two switches and two
wakeups on that CPU) runs for ``--seconds`` while, in turn, nothing / autoglm-trace's kernel probes
(in this process, every family, the pair as target) / ``runqlat-bpfcc`` (system-wide, as it runs)
are attached. BPF run-time statistics are on during the run (BPF_ENABLE_STATS: the counters of
``sysctl kernel.bpf_stats_enabled``, held by an fd, so the sysctl itself is never changed), and
each program's run_time_ns / run_cnt is read from bpf_prog_info. Reported per program: runs,
ns per run, and ns per round trip; and the round-trip rate against the untraced rounds of the same
run (interleaved).

  sudo .venv/bin/python bench/bench_sched_profile.py [--rounds 3] [--seconds 3] [--cpu 1] [--floor] [--ablate]
      [--doc PATH]
"""

from __future__ import annotations

import argparse
import functools
import os
import select
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import benchdoc

from autoglm_trace.collector import SessionContext
from autoglm_trace.probes import headers, libbpf
from autoglm_trace.probes.kernel import KernelProbes
from autoglm_trace.target import TargetTree


def pingpong(seconds: float, cpu: int) -> tuple[int, int, int]:
    """A ping-pong pair pinned to ``cpu``, started by a byte on the returned go fd."""
    go_r, go_w = os.pipe()
    a_r, a_w = os.pipe()
    b_r, b_w = os.pipe()
    res_r, res_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.sched_setaffinity(0, {cpu})
        child = os.fork()
        if child == 0:
            while True:
                c = os.read(a_r, 1)
                if not c or c == b"q":
                    os._exit(0)
                os.write(b_w, c)
        os.read(go_r, 1)
        n, end = 0, time.monotonic() + seconds
        while time.monotonic() < end:
            os.write(a_w, b"x")
            os.read(b_r, 1)
            n += 1
        os.write(a_w, b"q")
        os.waitpid(child, 0)
        os.write(res_w, f"{n}".encode())
        os._exit(0)
    for fd in (go_r, a_r, a_w, b_r, b_w, res_w):
        os.close(fd)
    return pid, res_r, go_w


def _finish(pid: int, res_r: int, go_w: int) -> int:
    os.write(go_w, b"g")
    os.close(go_w)
    os.waitpid(pid, 0)
    n = int(os.read(res_r, 64).decode())
    os.close(res_r)
    return n


def _stats(fds: dict[str, int]) -> dict[str, libbpf.ProgStats]:
    return {name: libbpf.prog_stats(fd) for name, fd in fds.items()}


def _counted(fds: dict[str, int], pid: int, res_r: int, go_w: int) -> dict:
    """Run a started pair to its end; its round trips and each program's (runs, ns) meanwhile."""
    before = _stats(fds)
    n = _finish(pid, res_r, go_w)
    return {"round_trips": n, "progs": _delta(before, _stats(fds))}


def run_untraced(seconds: float, cpu: int) -> dict:
    pid, r, g = pingpong(seconds, cpu)
    return {"round_trips": _finish(pid, r, g), "progs": {}}


def run_autoglm(seconds: float, cpu: int) -> dict:
    pid, r, g = pingpong(seconds, cpu)
    ctx = SessionContext(lambda t, rows: None, lambda t, c: None, lambda t, b: None, TargetTree.for_pid(pid),
                         is_root=True)
    k = KernelProbes()
    try:
        k.start(ctx)
    except BaseException:
        os.kill(pid, signal.SIGKILL)  # the pair waits for its go byte: never leave it behind
        os.waitpid(pid, 0)
        raise
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(0.1):
            k.sample(time.monotonic_ns())

    th = threading.Thread(target=loop, daemon=True)
    th.start()
    try:
        return _counted(k.bpf.progs, pid, r, g)
    finally:
        stop.set()
        th.join()
        k.stop()


def run_runqlat(seconds: float, cpu: int) -> dict:
    exe = benchdoc.bcc_tool("runqlat")
    if exe is None:
        raise RuntimeError("runqlat-bpfcc is not installed")
    headers.apply()  # bcc's tools need BCC_KERNEL_SOURCE too when the headers are the cached tree
    ids0 = libbpf.loaded_prog_ids()
    p = subprocess.Popen([exe], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         env=dict(os.environ, PYTHONUNBUFFERED="1"))
    fds: dict[str, int] = {}
    try:
        seen, deadline = b"", time.monotonic() + 60
        while b"Tracing" not in seen:
            if p.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"runqlat-bpfcc did not start: {p.stderr.read()[-300:]!r}")
            if select.select([p.stdout], [], [], 0.2)[0]:
                seen += os.read(p.stdout.fileno(), 4096)
        for pid_ in sorted(_prog_ids_of(p.pid) - ids0):
            fd = libbpf.prog_fd_by_id(pid_)
            fds[f"{libbpf.prog_stats(fd).name}#{pid_}"] = fd
        return _counted(fds, *pingpong(seconds, cpu))
    finally:
        p.send_signal(signal.SIGINT)
        try:
            p.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.communicate()
        for fd in fds.values():
            os.close(fd)


def _prog_ids_of(pid: int) -> set[int]:
    """Programs a process holds: the prog_id line of its fds' fdinfo (bpf-prog and link fds); the
    host's other programs (other users' tools and tests) are left out."""
    ids: set[int] = set()
    for fd in os.listdir(f"/proc/{pid}/fdinfo"):
        try:
            for line in Path(f"/proc/{pid}/fdinfo/{fd}").read_text().splitlines():
                if line.startswith("prog_id:"):
                    ids.add(int(line.split()[1]))
        except (OSError, ValueError):
            continue
    return ids


def _delta(before: dict, after: dict) -> dict[str, tuple[int, int]]:
    return {name: (after[name].run_cnt - before[name].run_cnt, after[name].run_time_ns - before[name].run_time_ns)
            for name in after}


MODES = {"untraced": run_untraced, "autoglm-trace kernel probes": run_autoglm, "runqlat-bpfcc": run_runqlat}

# --floor: what the building blocks of a sched_switch program cost here, one bcc program each on
# sched_switch (the same raw tracepoint, the same ping-pong): the floor of any program run (dispatch
# + the run-time statistics themselves), one clock read, three, one task_struct read, one hash lookup.
_FLOOR_BODY = {
    "floor: empty program": "return 0;",
    "floor: + 1 bpf_ktime_get_ns": "u64 t = bpf_ktime_get_ns(); return t == 1;",
    "floor: + 3 bpf_ktime_get_ns": "u64 a = bpf_ktime_get_ns(), b = bpf_ktime_get_ns(), c = bpf_ktime_get_ns();"
                                   " return a == 1 || b == 1 || c == 1;",
    "floor: + 1 task_struct read": "struct task_struct *n = (struct task_struct *)ctx->args[2]; u32 pid = 0;"
                                   " bpf_probe_read_kernel(&pid, sizeof(pid), &n->pid); return pid == 1;",
    "floor: + 1 hash lookup (u32 key)": "u32 k = bpf_get_current_pid_tgid(); return h.lookup(&k) != NULL;",
}


def _run_floor(body: str, seconds: float, cpu: int) -> dict:
    from bcc import BPF  # bench-only: the recorder itself never imports bcc

    headers.apply()
    text = ("#include <linux/sched.h>\nBPF_HASH(h, u32, u64, 32768);\n"
            f"RAW_TRACEPOINT_PROBE(sched_switch) {{ {body} }}\n")
    b = BPF(text=text)
    try:
        return _counted({"sched_switch": b.funcs[b"raw_tracepoint__sched_switch"].fd}, *pingpong(seconds, cpu))
    finally:
        b.cleanup()


FLOOR_MODES = {name: functools.partial(_run_floor, body) for name, body in _FLOOR_BODY.items()}


# --ablate: autoglm-trace's own sched_switch cut short at one point each (the program text edited
# before it loads, the same families and target otherwise), so a switch's cost splits into its parts:
# the difference between two rows is what the code between their cut points costs.
_SWITCH_CUT = "    /* The clock is read once, by whichever side is traced first (neither: no read). */"
_ABLATE = {
    "ablate: sched_switch returns at once": [("    bool preempt = (bool)TP_ARG(0);",
                                               "    return 0;\n    bool preempt = (bool)TP_ARG(0);")],
    "ablate: ... after both thread states": [(_SWITCH_CUT, "    if (pst || nst) return 0;")],
    "ablate: ... after the clock read": [(_SWITCH_CUT, "    if (pst || nst) return bpf_ktime_get_ns() == 7;")],
    "ablate: ... without settle()": [("            settle(pst, prev, v, bucket, prev_tid, prev_tgid);\n", "")],
}


def _run_ablated(edits: list[tuple[str, str]], seconds: float, cpu: int) -> dict:
    from autoglm_trace.probes import kernel

    real = kernel.generate_program

    def edited(opts: dict | None = None) -> str:
        text = real(opts)
        for old, new in edits:
            if old not in text:
                raise RuntimeError(f"--ablate: the program no longer has {old.strip()[:60]!r}; update _ABLATE")
            text = text.replace(old, new)
        return text

    kernel.generate_program = edited
    try:
        r = run_autoglm(seconds, cpu)
    finally:
        kernel.generate_program = real
    return r


ABLATE_MODES = {name: functools.partial(_run_ablated, edits) for name, edits in _ABLATE.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--cpu", type=int, default=max(os.sched_getaffinity(0)))
    ap.add_argument("--doc", type=Path)
    ap.add_argument("--section", default="bench_sched_profile")
    ap.add_argument("--floor", action="store_true",
                    help="also run one-probe programs that price the building blocks (empty program, clock read, ...)")
    ap.add_argument("--ablate", action="store_true",
                    help="also run autoglm-trace's sched_switch cut short at one point each (what its parts cost)")
    args = ap.parse_args(argv)
    modes = {**MODES, **(FLOOR_MODES if args.floor else {}), **(ABLATE_MODES if args.ablate else {})}
    if os.geteuid() != 0:
        print("bench_sched_profile: needs root (BPF)", file=sys.stderr)
        return 2
    load0 = benchdoc.load_average()
    stats_fd = libbpf.enable_stats()
    runs: dict[str, list[dict]] = {m: [] for m in modes}
    try:
        for rnd in range(args.rounds):
            for mode, fn in modes.items():
                r = fn(args.seconds, args.cpu)
                runs[mode].append(r)
                print(f"round {rnd + 1}: {mode}: {r['round_trips'] / args.seconds:,.0f} round trips/s",
                      file=sys.stderr)
    finally:
        os.close(stats_fd)
    base = [r["round_trips"] for r in runs["untraced"]]
    lines = [*benchdoc.section_header(f"### BPF run time per program, pinned ping-pong on CPU {args.cpu} "
                                      f"({args.rounds} interleaved rounds of {args.seconds:g} s)", load0),
             "| mode | round trips/s, median | vs untraced (same round), median (min-max) | program | runs per round trip "
             "| ns per run | ns per round trip |", "|---|---|---|---|---|---|---|"]
    for mode, rs in runs.items():
        rates = [r["round_trips"] / args.seconds for r in rs]
        ratios = [r["round_trips"] / b for r, b in zip(rs, base)]
        head = (f"| {mode} | {statistics.median(rates):,.0f} | "
                f"{(statistics.median(ratios) - 1) * 100:+.1f}% ({(min(ratios) - 1) * 100:+.1f}..{(max(ratios) - 1) * 100:+.1f}%) |")
        names = sorted({n for r in rs for n in r["progs"]})
        if not names:
            lines.append(head + " - | - | - | - |")
            continue
        total_per_rt = 0.0
        rows = []
        for n in names:
            cnt = sum(r["progs"].get(n, (0, 0))[0] for r in rs)
            ns = sum(r["progs"].get(n, (0, 0))[1] for r in rs)
            rts = sum(r["round_trips"] for r in rs)
            if not cnt:
                continue
            total_per_rt += ns / rts
            rows.append((n, cnt / rts, ns / cnt, ns / rts))
        for i, (n, per_rt, ns_run, ns_rt) in enumerate(rows):
            lines.append((head if i == 0 else "| | | |") + f" {n} | {per_rt:.2f} | {ns_run:.0f} | {ns_rt:.0f} |")
        lines.append(f"| | | | **all programs** | | | **{total_per_rt:.0f}** |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.doc:
        benchdoc.replace_section(args.doc, args.section, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
