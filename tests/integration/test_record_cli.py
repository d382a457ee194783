"""record / summary / doctor end to end, as a user runs them (real processes, the installed CLI).

The sampler's counters are checked against what the child reads from its own /proc files, and the
summary's totals against the kernel's wait4 rusage -- independent ground truth.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pyarrow as pa
import pyarrow.compute as pc

from autoglm_trace.analysis.reader import Recording

CHILD = textwrap.dedent(
    """
    import json, sys, time
    pages = [bytearray(4096) for _ in range(30000)]   # ~30k minor faults
    for i in range(150):
        time.sleep(0.004)                             # ~150 voluntary switches
    def own():
        st = open('/proc/self/stat').read()
        f = st[st.rindex(')') + 2:].split()
        status = dict(l.split(':', 1) for l in open('/proc/self/status').read().splitlines())
        return {'minflt': int(f[7]), 'majflt': int(f[9]),
                'vol': int(status['voluntary_ctxt_switches']), 'invol': int(status['nonvoluntary_ctxt_switches'])}
    open(sys.argv[1], 'w').write(json.dumps(own()))
    t = time.time()
    while time.time() - t < 0.6:   # stay alive (mostly idle) so the sampler sees the final counters
        time.sleep(0.05)
    open(sys.argv[1] + '.end', 'w').write(json.dumps(own()))  # and again: the last sample lies between
    print('child done', file=sys.stderr)
    sys.exit(3)
    """
)


def run(cli, *args, timeout=120, **kw):
    return subprocess.run([*cli, *args], capture_output=True, text=True, timeout=timeout, **kw)


def test_record_a_child_and_match_its_own_proc_counters(cli, tmp_path):
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    own = tmp_path / "own.json"
    rec_dir = tmp_path / "rec"
    r = run(cli, "record", "-q", "--no-bpf", "--no-gpu", "-o", str(rec_dir), "--", sys.executable, str(script), str(own))
    assert r.returncode == 7, r.stderr  # the child exits 3: recorded, and the status says it failed
    assert "exited with status 3" in r.stderr
    assert "child done" in r.stderr  # the child's stderr is teed, never swallowed
    truth = json.loads(own.read_text())
    end = json.loads((tmp_path / "own.json.end").read_text())

    # The files are plain Arrow IPC streams.
    with pa.ipc.open_stream(rec_dir / "proc_samples.arrow") as s:
        samples = s.read_all()
    root_pid = json.loads((rec_dir / "manifest.json").read_text())["target"]["pid"]
    mine = samples.filter(pc.equal(samples["pid"], root_pid)).sort_by("ts_ns")
    last = mine.slice(mine.num_rows - 1).to_pylist()[0]
    # The last sample is taken after the child first read its own counters and (but for its exit
    # path) before its second reading at the end: it lies between the two, whatever the load did to
    # the idle 0.6 s in between (a busy box preempts the child there).
    assert 0 <= last["minflt"] - truth["minflt"] <= 0.02 * truth["minflt"] + 50
    assert last["minflt"] <= end["minflt"] + 50
    assert last["majflt"] >= truth["majflt"]
    assert truth["vol"] <= last["ctx_voluntary"] <= end["vol"] + 5
    # Involuntary: the exit path after the second reading can be preempted many times on a busy box;
    # the upper bound is the kernel's whole-life count (wait4), checked below with the summary.
    assert truth["invol"] <= last["ctx_involuntary"]
    assert end["vol"] - truth["vol"] <= 40  # the idle loop is ~12 sleeps: the counters are the child's own
    assert truth["minflt"] > 25000 and truth["vol"] >= 150

    rec = Recording(rec_dir)
    assert rec.complete
    m = rec.manifest
    assert m["target"]["exit_code"] == 3 and m["target"]["signal"] is None
    assert "child done" in m["target"]["stderr_tail"]
    assert m["collectors"]["kernel"]["status"] == "unavailable"
    assert rec.table("processes").column("comm").to_pylist()[0].startswith("python")

    s = run(cli, "summary", str(rec_dir), "--json")
    assert s.returncode == 0, s.stderr
    summary = json.loads(s.stdout)
    assert summary["target"]["exit_code"] == 3 and summary["complete"] is True
    tot = summary["totals"]
    # Totals come from wait4 (the kernel's own whole-life counters) without BPF.
    assert tot["ctx_switches_voluntary"]["source"] == "wait4"
    assert abs(tot["page_faults_minor"]["value"] - last["minflt"]) <= 0.03 * last["minflt"]
    assert abs(tot["ctx_switches_voluntary"]["value"] - last["ctx_voluntary"]) <= 0.03 * last["ctx_voluntary"] + 5
    assert tot["ctx_switches_involuntary"]["source"] == "wait4"
    assert end["invol"] <= tot["ctx_switches_involuntary"]["value"]
    assert last["ctx_involuntary"] <= tot["ctx_switches_involuntary"]["value"]
    assert tot["peak_rss_bytes"]["value"] > 100 * 1024 * 1024
    assert summary["tables"]["proc_samples"] >= 5
    assert summary["duration_s"] > 0.6


def test_children_started_later_join_the_tree(cli, tmp_path):
    code = "import subprocess,sys,time; time.sleep(0.3); p=subprocess.Popen([sys.executable,'-c','import time; time.sleep(0.8)']); p.wait()"
    rec_dir = tmp_path / "rec"
    r = run(cli, "record", "-q", "--no-bpf", "--no-gpu", "-o", str(rec_dir), "--", sys.executable, "-c", code)
    assert r.returncode == 0, r.stderr
    rec = Recording(rec_dir)
    pids = set(rec.table("proc_samples").column("pid").to_pylist())
    assert len(pids) == 2, pids
    procs = rec.table("processes").to_pylist()
    assert sum(1 for p in procs if p["is_root"]) == 1


def test_duration_and_attach_to_pid(cli, tmp_path):
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        r = run(cli, "record", "-q", "--no-bpf", "--no-gpu", "-p", str(p.pid), "-d", "1", "-o", str(tmp_path / "rec"))
        assert r.returncode == 0, r.stderr
        rec = Recording(tmp_path / "rec")
        assert rec.manifest["stop_reason"] == "duration reached"
        assert rec.manifest["target"]["pid"] == p.pid
        assert 0.9 < rec.manifest["duration_s"] < 5
        assert p.poll() is None  # attaching never harms the target
    finally:
        p.kill()
        p.wait()


def one_line_error(r: subprocess.CompletedProcess) -> str:
    assert r.returncode != 0
    assert "Traceback" not in r.stderr, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("autoglm-trace: error:"), lines[0]
    return lines[0]


def test_bad_input_is_one_line_and_nonzero(cli, tmp_path):
    assert "no process with pid" in one_line_error(run(cli, "record", "-p", "999999", "-o", str(tmp_path / "a")))
    assert "command not found" in one_line_error(run(cli, "record", "-o", str(tmp_path / "b"), "--", "no-such-cmd-xyz"))
    assert "no target" in one_line_error(run(cli, "record", "-o", str(tmp_path / "c")))
    assert "one target" in one_line_error(run(cli, "record", "-p", "1", "--host", "-o", str(tmp_path / "d")))
    assert "no such recording" in one_line_error(run(cli, "summary", str(tmp_path / "missing")))
    (tmp_path / "empty").mkdir()
    assert "empty" in one_line_error(run(cli, "summary", str(tmp_path / "empty")))
    (tmp_path / "notrec").mkdir()
    (tmp_path / "notrec" / "x.csv").write_text("a,b\n")
    assert "not an autoglm-trace recording" in one_line_error(run(cli, "summary", str(tmp_path / "notrec")))
    assert "unknown command" in one_line_error(run(cli, "frobnicate"))
    assert "invalid int" in one_line_error(run(cli, "record", "-p", "abc"))
    r = run(cli, "record", "-o", str(tmp_path / "e"), "--", str(tmp_path / "notrec" / "x.csv"))
    assert "cannot execute" in one_line_error(r)
    assert not (tmp_path / "a").exists()  # nothing half-made for a target that never existed


def test_existing_non_empty_output_is_refused_and_kept(cli, tmp_path):
    out = tmp_path / "rec"
    out.mkdir()
    (out / "precious").write_text("data")
    assert "not empty" in one_line_error(run(cli, "record", "-o", str(out), "--", "true"))
    assert (out / "precious").read_text() == "data"


def test_help_lists_commands_with_examples(cli):
    r = run(cli, "--help")
    assert r.returncode == 0
    for name in ("record", "summary", "doctor"):
        assert f"  {name}" in r.stdout
    r = run(cli, "record", "--help")
    assert "examples:" in r.stdout and "--print-bpf" not in r.stdout


def test_doctor_reports_a_table(cli):
    r = run(cli, "doctor", "--json")
    data = json.loads(r.stdout)
    checks = {c["check"]: c for c in data["checks"]}
    assert {"root", "tracefs", "kernel headers", "bcc", "NVML", "cgroups"} <= set(checks)
    assert "tracepoint sched/sched_switch" in checks
    assert checks["kprobes"]["status"] in ("ok", "warn")
    for c in data["checks"]:
        if c["status"] == "fail":
            assert c["fix"], c
    if os.geteuid() == 0:
        assert r.returncode == (0 if data["ok"] else 1)
