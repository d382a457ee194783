"""The accuracy table: every scenario of tests/scenarios/cases.py run N times under the real recorder,
judged (right kind first? right culprit first?), and written into docs/analysis.md between
``<!-- scenario_accuracy:begin -->`` and ``<!-- scenario_accuracy:end -->``.

    sudo .venv/bin/python -m tests.scenarios.accuracy --runs 3        # or: sudo make scenarios-accuracy

Every run counts: a run that disagrees is listed with what the analysis said instead, never retried.
Scenarios interleave (round-robin), so a burst of load on the machine does not hit one scenario only;
the load average is recorded before and after.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import sys
import tempfile
import time
from pathlib import Path

from tests.scenarios import cases

BEGIN, END = "<!-- scenario_accuracy:begin -->", "<!-- scenario_accuracy:end -->"
DOC = Path(__file__).resolve().parents[2] / "docs" / "analysis.md"


def _load() -> str:
    return " / ".join(f"{x:.1f}" for x in os.getloadavg())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--cases", default=",".join(cases.CASES), help="comma-separated (default: all)")
    p.add_argument("--doc", type=Path, default=DOC)
    p.add_argument("--json", type=Path, help="also write every run's verdict here")
    p.add_argument("--combine", type=Path, nargs="+", metavar="JSON",
                   help="write the table from the --json files of earlier runs (scenarios split over several "
                        "shorter runs) instead of running")
    a = p.parse_args(argv)
    if a.combine:
        return _combine(a.combine, a.doc)
    names = [n for n in a.cases.split(",") if n]
    unknown = [n for n in names if n not in cases.CASES]
    if unknown:
        p.error(f"unknown scenarios {unknown}; known: {', '.join(cases.CASES)}")
    started = dt.datetime.now(dt.timezone.utc)
    load0 = _load()
    results: dict[str, list[dict]] = {n: [] for n in names}
    for i in range(a.runs):
        for n in names:
            case = cases.CASES[n]
            with tempfile.TemporaryDirectory(prefix=f"acc-{n}-") as d:
                t0 = time.monotonic()
                try:
                    s = cases.record(case, Path(d))
                    v = cases.judge(case, s)
                except Exception as e:  # noqa: BLE001 - a run that fails is a finding, reported
                    v = {"right_kind": False, "right_culprit": False, "verdict": f"run failed: {e}"[:300]}
                v.update(run=i + 1, seconds=round(time.monotonic() - t0, 1), load=_load())
            results[n].append(v)
            print(f"[{n} run {i + 1}] kind {'ok' if v['right_kind'] else 'WRONG'}, culprit "
                  f"{'ok' if v['right_culprit'] else 'WRONG'}: {v['verdict']}", flush=True)
    load1 = _load()
    _write_doc(a.doc, render(results, a.runs, started, load0, load1))
    if a.json:
        a.json.write_text(json.dumps({"results": results, "runs": a.runs, "started": started.isoformat(),
                                      "load": [load0, load1]}, indent=1))
    bad = sum(1 for rs in results.values() for r in rs if not (r["right_kind"] and r["right_culprit"]))
    print(f"{bad} of {sum(len(r) for r in results.values())} runs disagree; table written to {a.doc}")
    return 0


def _write_doc(doc: Path, section: str) -> None:
    text = doc.read_text()
    if BEGIN in text and END in text:
        text = re.sub(re.escape(BEGIN) + ".*?" + re.escape(END), lambda _m: section, text, flags=re.S)
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    doc.write_text(text)


def _combine(files: list[Path], doc: Path) -> int:
    """One table from several runs' --json files (each a part of the scenarios), every run kept."""
    parts = []
    for f in files:
        try:
            d = json.loads(f.read_text())
            parts.append((dt.datetime.fromisoformat(d["started"]), d))
        except (OSError, ValueError, KeyError, TypeError) as e:
            print(f"accuracy: cannot read {f}: {e}", file=sys.stderr)
            return 2
    parts.sort(key=lambda x: x[0])
    results: dict[str, list[dict]] = {}
    for n in cases.CASES:
        for _t, d in parts:
            if n in d["results"]:
                results.setdefault(n, []).extend(d["results"][n])
    loads = "; ".join(f"{d['load'][0]} before and {d['load'][1]} after" for _t, d in parts)
    _write_doc(doc, render(results, max(d["runs"] for _t, d in parts), parts[0][0], loads, None,
                           len(parts)))
    print(f"table of {sum(len(r) for r in results.values())} runs ({len(parts)} parts) written to {doc}")
    return 0


def render(results: dict[str, list[dict]], runs: int, started: dt.datetime, load0: str, load1: str | None,
           parts: int = 1) -> str:
    lines = [BEGIN, "### Scenario accuracy (latest run)", "",
             f"Command: `sudo make scenarios-accuracy` (`python -m tests.scenarios.accuracy --runs {runs}`), "
             f"{started:%Y-%m-%d %H:%M} UTC, {platform.node() and 'this VM'}: {os.cpu_count()} CPUs, "
             + (f"load average {load0} before and {load1} after" if load1 is not None else
                f"in {parts} consecutive parts (scenarios split to keep each run short), load average {load0}")
             + " (1 / 5 / 15 min; other work shares this machine).",
             "",
             "| scenario | trouble | runs | right kind first | right culprit first | right kind |",
             "|---|---|---|---|---|---|"]
    for n, rs in results.items():
        c = cases.CASES[n]
        kinds = " or ".join(f"`{k}`" for k in c.kinds) or "none (blames nobody)"
        k = sum(r["right_kind"] for r in rs)
        u = sum(r["right_culprit"] for r in rs)
        lines.append(f"| {n} | {_trouble(c)} | {len(rs)} | {k}/{len(rs)} | {u}/{len(rs)} | {kinds} |")
    bad = [(n, r) for n, rs in results.items() for r in rs if not (r["right_kind"] and r["right_culprit"])]
    lines += ["", "Runs that disagree (reported as they came, not retried):" if bad else
              "Every run agreed.", ""]
    for n, r in bad:
        lines.append(f"- {n} run {r['run']} (load {r['load']}): {r['verdict']}")
    lines.append(END)
    return "\n".join(lines)


def _trouble(c: cases.Case) -> str:
    return {
        "hog": "outside the tree (`noisy-hog`)", "child": "a child process of the server (pid)",
        "thread": "a thread of the server (tid)", "none": "none",
        "kind": "outside the tree (balloon in the server's memcg); kind only",
    }[c.culprit]


if __name__ == "__main__":
    sys.exit(main())
