"""The demo's weights file: made once and whole, however many servers start at the same time."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import time

import numpy as np

from autoglm_trace.demo.server import ModelConfig, default_weights_path

# ~7 MB: big enough that creators overlap, small enough for a unit test.
CFG = dict(layers=2, hidden=128, experts=4, ffn=512, vocab=4096)
CREATE = f"""
import sys
from autoglm_trace.demo.server import ModelConfig, ensure_weights
print(ensure_weights(ModelConfig(**{CFG!r})))
"""


def _creator(demo_dir) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", CREATE], env=dict(os.environ, AUTOGLM_DEMO_DIR=str(demo_dir)),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_concurrent_creators_make_one_whole_file(tmp_path):
    cfg = ModelConfig(**CFG)
    procs = [_creator(tmp_path) for _ in range(4)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, [err[-500:] for _, err in outs]
    path = tmp_path / default_weights_path(cfg).name
    assert {out.strip() for out, _ in outs} == {str(path)}
    got = np.fromfile(path, dtype=np.float32)
    head = np.random.default_rng(0).standard_normal(min(cfg.n_floats(), 1 << 22), dtype=np.float32) * 0.05
    assert len(got) == cfg.n_floats() and np.array_equal(got[: len(head)], head)
    assert path.stat().st_mode & 0o777 == 0o644  # a server running as another user reads it
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name, path.name + ".lock"]  # no temp files left


def test_a_creator_waiting_on_the_lock_uses_the_file_made_meanwhile(tmp_path):
    cfg = ModelConfig(**CFG)
    path = tmp_path / default_weights_path(cfg).name
    fd = os.open(path.with_name(path.name + ".lock"), os.O_RDONLY | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        p = _creator(tmp_path)
        time.sleep(1.0)
        assert p.poll() is None  # waits for the lock holder
        path.write_bytes(b"\0" * (cfg.n_floats() * 4))
        ino = path.stat().st_ino
    finally:
        os.close(fd)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    assert path.stat().st_ino == ino  # not made a second time
