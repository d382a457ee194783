#!/usr/bin/env bash
# The real-GPU check (issue 17): on a machine with an NVIDIA GPU, its driver and PyTorch, record a CUDA
# workload that grows until CUDA OOM and check what autoglm-trace saw:
#   - per-process GPU memory from NVML (gpu_processes) against torch.cuda.memory_reserved(),
#   - the CUDA OOM reported by `autoglm-trace oom`,
#   - NVML call latency per sample and the GPU sampler's CPU cost (bench/bench_nvml.py --backend real).
# Writes its figures into docs/benchmarks-gpu.md (section gpu_check) and finishes in under 5 minutes.
#
#   bash bench/gpu_check.sh            # as root the kernel probes run too; without root, --no-bpf
#   bash bench/gpu_check.sh --doc /tmp/x.md
#
# Exit status: 0 all checks passed; 1 a check failed (the doc section says which); 77 no NVIDIA GPU
# here (nothing measured); 78 a GPU but no PyTorch with CUDA; 124 the 5-minute limit was reached.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
exec timeout --kill-after=10 295 "$PY" bench/gpu_check.py "$@"
