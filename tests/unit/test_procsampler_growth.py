"""The /proc sampler's time-to-full alert, fed by a real process whose RSS climbs inside a memcg-like limit."""

from autoglm_trace import procfs
from autoglm_trace.collector import SessionContext
from autoglm_trace.probes import procsampler
from autoglm_trace.probes.procsampler import ProcSampler, memcg_limit_bytes
from autoglm_trace.target import TargetTree


def test_memcg_limit_reading(tmp_path, monkeypatch):
    d = tmp_path / "fs" / "cgroup" / "memory" / "demo"
    d.mkdir(parents=True)
    (d / "memory.limit_in_bytes").write_text("104857600\n")
    monkeypatch.setattr(procfs, "SYS_ROOT", tmp_path)
    assert memcg_limit_bytes("/demo") == 104857600
    (d / "memory.limit_in_bytes").write_text("9223372036854771712\n")  # v1 "no limit"
    assert memcg_limit_bytes("/demo") is None
    assert memcg_limit_bytes("") is None


def test_growth_alert_emitted_for_a_climbing_tree(monkeypatch):
    rows: dict[str, list] = {}
    ctx = SessionContext(emit_rows=lambda t, r: rows.setdefault(t, []).extend(r), emit_columns_fn=lambda t, c: None,
                         emit_batch_fn=lambda t, b: None, target=TargetTree.for_host())
    s = ProcSampler({"growth_every": 1})
    s.start(ctx)
    ctx.target = TargetTree(mode="tree", root_pid=4242)
    monkeypatch.setattr(s, "_memory_limit", lambda now, rss: 1000e6)
    for i in range(40):  # 100 MB/s towards a 1 GB limit, sampled every 250 ms
        s._watch_growth(int(i * 0.25e9), 100e6 + i * 25e6)
    alerts = rows.get("alerts", [])
    assert alerts, "no alert for memory reaching its limit in seconds"
    a = alerts[-1]
    assert a["kind"] == "memory_growth" and a["subject"] == "pid 4242 tree"
    assert 0 < a["eta_s"] < 10 and "full in" in a["message"] or "at its limit" in a["message"]
    assert s.status()["alert"] == a["message"]
    assert procsampler.memcg_limit_bytes  # exported for the kernel probes' OOM rows too
