"""Container / pod / systemd-unit naming from cgroup paths (v1 and v2 layouts of kubelet's cgroupfs and
systemd drivers, Docker, Podman, containerd), and the record-time identity scan over a fake /proc."""

from __future__ import annotations

import pytest

from autoglm_trace import procfs
from autoglm_trace.analysis.containers import label, naming, parse_cgroup, who
from autoglm_trace.collector import SessionContext
from autoglm_trace.probes.identity import IdentitySampler
from autoglm_trace.target import TargetTree

UID = "7f9c1a2b-3c4d-4e5f-8a9b-0c1d2e3f4a5b"
CID = "3f4a5b6c7d8e9f0a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d6e7f8a9b0c1d2e3f4a"


@pytest.mark.parametrize("path,want", [
    (f"/kubepods/burstable/pod{UID}/{CID}", ("kubernetes", "burstable", f"pod 7f9c1a2b/{CID[:12]}")),
    (f"/kubepods/pod{UID}/{CID}", ("kubernetes", "guaranteed", f"pod 7f9c1a2b/{CID[:12]}")),
    (f"/kubepods/besteffort/pod{UID}/{CID}", ("kubernetes", "besteffort", f"pod 7f9c1a2b/{CID[:12]}")),
    (f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID.replace('-', '_')}.slice/"
     f"cri-containerd-{CID}.scope", ("kubernetes", "burstable", f"pod 7f9c1a2b/{CID[:12]}")),
    (f"/kubepods.slice/kubepods-pod{UID.replace('-', '_')}.slice/crio-{CID}.scope",
     ("kubernetes", "guaranteed", f"pod 7f9c1a2b/{CID[:12]}")),
    (f"/kubepods/burstable/pod{UID}", ("kubernetes", "burstable", "pod 7f9c1a2b")),
    (f"/docker/{CID}", ("docker", None, f"container {CID[:12]}")),
    (f"/system.slice/docker-{CID}.scope", ("docker", None, f"container {CID[:12]}")),
    (f"/machine.slice/libpod-{CID}.scope", ("podman", None, f"container {CID[:12]} (podman)")),
    (f"/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{CID}.scope",
     ("podman", None, f"container {CID[:12]} (podman)")),
    (f"/k8s.io/{CID}", ("containerd", None, f"container {CID[:12]} (containerd)")),
    ("/system.slice/vllm.service", (None, None, "unit vllm.service")),
    ("/user.slice/user-1000.slice/session-3.scope", (None, None, None)),
    ("/process_api/73e1e404e5e3172f9f9f5f540c77719a", (None, None, None)),  # a hex name alone is no container
    ("/", (None, None, None)),
    ("", (None, None, None)),
])
def test_cgroup_paths(path, want):
    d = parse_cgroup(path)
    assert (d.get("runtime"), d.get("qos"), label(d)) == want
    if d.get("runtime") == "kubernetes":
        assert d["pod_uid"] == UID


def test_names_on_disk_win_and_the_culprit_reads_like_an_operator_would_say_it():
    meta = {"cgroup": f"/kubepods/burstable/pod{UID}/{CID}", "pod_name": "batch-7f9c", "user": "alice"}
    c = {"pid": 9123, "comm": "python", **naming(meta)}
    assert c["where"] == f"pod batch-7f9c/{CID[:12]}"
    assert c["container"] == {"runtime": "kubernetes", "container_id": CID, "pod_uid": UID, "pod_name": "batch-7f9c",
                              "qos": "burstable"}
    assert who(c) == f"pod batch-7f9c/{CID[:12]} (pid 9123 `python`, user alice)"
    c2 = {"pid": 5, "comm": "nginx", **naming({"cgroup": f"/docker/{CID}", "container_name": "web", "uid": 33})}
    assert who(c2) == "container web (pid 5 `nginx`, user 33)"
    assert who({"pid": 7, "comm": "x", **naming({"cgroup": "/system.slice/cron.service", "user": "root"})}) == \
        "unit cron.service (pid 7 `x`)"
    assert who({"pid": 7, "comm": None}) == "pid 7"


def test_identity_scan_reads_new_processes_once(tmp_path, monkeypatch):
    for pid, comm, cg, uid in ((4242, "trainer", f"12:memory:/kubepods/burstable/pod{UID}/{CID}\n0::/\n", 0),
                               (77, "cron", "0::/system.slice/cron.service\n", 65534)):
        d = tmp_path / str(pid)
        d.mkdir()
        (d / "stat").write_text(f"{pid} ({comm}) S 1 1 1 0 -1 0 0 0 0 0 1 1 0 0 20 0 1 0 99 1000 10 0 0\n")
        (d / "status").write_text(f"Name:\t{comm}\nUid:\t{uid}\t{uid}\t{uid}\t{uid}\n")
        (d / "cgroup").write_text(cg)
    (tmp_path / "self").mkdir()
    monkeypatch.setattr(procfs, "PROC_ROOT", tmp_path)
    rows: dict[str, list] = {}
    ctx = SessionContext(emit_rows=lambda t, r: rows.setdefault(t, []).extend(r), emit_columns_fn=lambda *_: None,
                         emit_batch_fn=lambda *_: None, target=TargetTree.for_host())
    s = IdentitySampler({"identity_every_ms": 1})
    s.start(ctx)
    s.sample(10**10)
    got = {r["pid"]: r for r in rows["process_identities"]}
    assert set(got) == {4242, 77}  # once each, however many scans
    assert got[4242]["cgroup"] == f"/kubepods/burstable/pod{UID}/{CID}" and got[4242]["user"] == "root"
    assert got[77]["cgroup"] == "/system.slice/cron.service" and got[77]["uid"] == 65534
    assert got[4242]["pod_name"] is None  # no /proc/4242/root/etc/hostname here
