"""The /proc parsers against canned kernel text (every path goes through procfs.PROC_ROOT)."""

import pytest

from autoglm_trace import procfs

STAT = ("4242 (my (weird) comm) S 1 4242 4242 0 -1 4194560 1234 0 7 0 250 50 0 0 20 0 9 0 "
        "12345 1000000 2560 18446744073709551615 0 0 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0\n")
STATUS = "Name:\tmy (weird) comm\nUid:\t1000\t1000\t1000\t1000\nvoluntary_ctxt_switches:\t321\nnonvoluntary_ctxt_switches:\t12\n"


@pytest.fixture
def fake_proc(tmp_path, monkeypatch):
    d = tmp_path / "4242"
    d.mkdir()
    (d / "stat").write_text(STAT)
    (d / "status").write_text(STATUS)
    (d / "statm").write_text("244 2560 100 1 0 50 0\n")
    (d / "io").write_text("rchar: 10\nwchar: 20\nread_bytes: 4096\nwrite_bytes: 8192\n")
    (d / "cgroup").write_text("12:memory:/demo\n0::/user.slice\n")
    (tmp_path / "pressure").mkdir()
    (tmp_path / "pressure" / "memory").write_text(
        "some avg10=0.00 avg60=0.00 avg300=0.00 total=1500\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=700\n")
    (tmp_path / "meminfo").write_text("MemTotal:       1000 kB\nMemAvailable:    500 kB\nHugePages_Total:       0\n")
    (tmp_path / "stat").write_text("cpu  1 2 3 4 5 6 7 8 0 0\ncpu0 1 2 3 4 5 6 7 8 0 0\nctxt 999\nbtime 100\n")
    monkeypatch.setattr(procfs, "PROC_ROOT", tmp_path)
    return tmp_path


def test_stat_handles_parentheses_in_comm(fake_proc):
    st = procfs.read_pid_stat(4242)
    assert st["comm"] == "my (weird) comm"
    assert (st["state"], st["ppid"], st["minflt"], st["majflt"]) == ("S", 1, 1234, 7)
    assert st["utime_s"] == 250 / procfs.CLK_TCK and st["stime_s"] == 50 / procfs.CLK_TCK
    assert st["num_threads"] == 9 and st["rss_pages"] == 2560


def test_status_statm_io_cgroup(fake_proc):
    s = procfs.read_pid_status(4242)
    assert s["voluntary_ctxt_switches"] == "321" and s["nonvoluntary_ctxt_switches"] == "12"
    assert procfs.read_pid_statm(4242)[2] == 100 * procfs.PAGE_SIZE
    assert procfs.read_pid_io(4242) == (4096, 8192)
    assert procfs.read_pid_cgroup(4242) == "/demo"  # the memory controller's path wins
    assert procfs.read_uid(4242) == 1000


def test_host_files(fake_proc):
    assert procfs.read_pressure("memory") == {"some": 1500, "full": 700}
    assert procfs.read_pressure("cpu") is None  # PSI disabled for that resource
    mem = procfs.read_meminfo()
    assert mem["MemTotal"] == 1000 * 1024 and mem["HugePages_Total"] == 0
    cpus, ctxt = procfs.read_stat_cpus()
    assert cpus == [(0, [1, 2, 3, 4, 5, 6, 7, 8, 0, 0])] and ctxt == 999


def test_vanished_process_is_proc_gone(fake_proc):
    with pytest.raises(procfs.ProcGone):
        procfs.read_pid_stat(99999)
    assert procfs.read_pid_io(99999) == (None, None)
