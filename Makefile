# autoglm-trace -- every target installs what it needs first (scripts/setup.sh is idempotent).
VENV ?= .venv
PY := $(VENV)/bin/python
AT := $(VENV)/bin/autoglm-trace
PYTEST_ARGS ?=

.PHONY: docs setup test unit lint demo scenarios-accuracy bench-wakeups bench bench-overhead bench-capacity bench-recorder bench-analysis bench-nvml bench-span clean bench-fleet

setup:
	@bash scripts/setup.sh

## The test command CI runs (.ci/run): lint, then every test; root/BPF tests run for real as root.
test: setup
	$(VENV)/bin/ruff check .
	$(PY) -m pytest $(PYTEST_ARGS)

unit: setup
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check .

## The main job: record the bundled demo inference server with one injected incident (a CPU hog
## outside its process tree, pinned to its CPU), then print the diagnosis. Needs root for the probes.
DEMO_INCIDENT ?= cpu-hog
## DEMO_METRICS=vllm: the recording gets the server's vLLM-format histograms alone (no spans, no log).
DEMO_METRICS ?= all
DEMO_REC ?= recordings/demo-$(shell date +%Y%m%d-%H%M%S)
demo: setup
	@mkdir -p recordings
	$(AT) demo --incident $(DEMO_INCIDENT) --record $(DEMO_REC) --metrics $(DEMO_METRICS)
	@echo "report: $(AT) report $(DEMO_REC) -o $(DEMO_REC).html"

## The scenario accuracy table in docs/analysis.md: every scenario (tests/scenarios/cases.py) run
## SCENARIO_RUNS times under the real recorder, judged, the section rewritten (root: BPF). ~45 s a run.
SCENARIO_RUNS ?= 3
scenarios-accuracy: setup
	$(PY) -m tests.scenarios.accuracy --runs $(SCENARIO_RUNS) --doc docs/analysis.md

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache

## Regenerate the table reference in docs/format.md from autoglm_trace/schema.py.
docs: setup
	$(PY) scripts/gen_format_doc.py

## Issue-7 benchmarks (root: BPF). Each rewrites its own section of docs/benchmarks-overhead.md.
bench-overhead: setup
	$(PY) bench/bench_overhead.py --doc docs/benchmarks-overhead.md
	$(PY) bench/bench_overhead.py --work 0 --rounds 3 --section bench_overhead_stress --doc docs/benchmarks-overhead.md
	$(PY) bench/bench_overhead.py --pin 1 --pairs 1 --decoders 0 --work 0 --rounds 5 --duration 5 --section bench_overhead_pinned --doc docs/benchmarks-overhead.md

## The waker aggregation's cost on the stress workload (<= 1 pp target), interleaved with/without it.
bench-wakeups: setup
	$(PY) bench/bench_wakeups.py --rounds 5 --doc docs/benchmarks-overhead.md

bench-capacity: setup
	$(PY) bench/bench_capacity.py --doc docs/benchmarks-overhead.md

## BENCH_RECORDER_S=600 for the 10-minute figure.
BENCH_RECORDER_S ?= 60
bench-recorder: setup
	$(PY) bench/bench_recorder.py --duration $(BENCH_RECORDER_S) --doc docs/benchmarks-overhead.md

## Issue 15: run the cpu-hog demo 10 times beside a steady load; tally into docs/demo.md.
demo-tally: setup
	$(PY) bench/demo_tally.py --metrics $(DEMO_METRICS)

## Issue-17 benchmark: the fleet report over 1,000 hosts' one-hour exports (docs/benchmarks-fleet.md).
bench-fleet: setup
	$(PY) bench/bench_fleet.py --hosts 1000 --repeat 3 --doc docs/benchmarks-fleet.md
