"""``autoglm-trace fleet DIR``: incidents, culprits and latency regressions across many hosts' exports."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from autoglm_trace.errors import UsageError, WriteError
from autoglm_trace.tracer.commands._parser import CommandParser

NAME = "fleet"
SUMMARY = "query many hosts' Parquet exports (DuckDB): incidents by host, top culprits, regressions (--json, --html)"
ORDER = 47

EPILOG = """examples:
  autoglm-trace fleet /data/fleet
  autoglm-trace fleet /data/fleet --since 2025-11-20 --until 2025-11-27 --every day
  autoglm-trace fleet /data/fleet --builds v2.3.0 v2.3.1        # did the new build regress, and where?
  autoglm-trace fleet /data/fleet --before 2025-11-20..2025-11-22 --after 2025-11-25..2025-11-27
  autoglm-trace fleet /data/fleet --json | jq '.top_culprits[:5]'
  autoglm-trace fleet /data/fleet --html fleet.html
  autoglm-trace fleet --sql top_culprits                       # print a query, to run it on Spark or Trino

DIR holds exports written by 'autoglm-trace export REC --parquet DIR' (or the flight recorder's
--export-parquet), from any number of hosts. Without --before/--after or --builds, latency is
compared between the first and the second half of the time the recordings cover. Times are UTC.
The queries are the .sql files printed by --sql; docs/fleet.md shows them on Spark SQL and Trino."""


def main(argv: list[str]) -> int:
    p = CommandParser(NAME, SUMMARY, EPILOG)
    p.add_argument("dir", nargs="?", help="directory of Parquet exports")
    p.add_argument("--since", metavar="TIME", help="only rows from this UTC date / time on")
    p.add_argument("--until", metavar="TIME", help="only rows before this UTC date / time")
    p.add_argument("--every", choices=("hour", "day", "auto"), default="auto", help="time bucket of the over-time table")
    p.add_argument("--top", type=int, default=20, metavar="N", help="rows of the top-culprit and incident lists (default 20)")
    p.add_argument("--before", metavar="START..END", help="latency regression: the earlier period")
    p.add_argument("--after", metavar="START..END", help="latency regression: the later period")
    p.add_argument("--builds", nargs=2, metavar=("OLD", "NEW"), help="latency regression between two build labels")
    p.add_argument("--engine", choices=("duckdb", "spark"), default="duckdb", help="SQL engine (default duckdb, embedded)")
    p.add_argument("--json", action="store_true", help="machine-readable output (docs/fleet.md)")
    p.add_argument("--html", metavar="FILE", help="also write the result as one HTML page")
    p.add_argument("--sql", metavar="QUERY", nargs="?", const="", help="print a query's SQL (no name: list them) and exit")
    args = p.parse_args(argv)

    from autoglm_trace.analysis import fleet

    if args.sql is not None:
        if not args.sql:
            print("\n".join(fleet.query_names()))
        else:
            sys.stdout.write(fleet.sql_text(args.sql))
        return 0
    if not args.dir:
        raise UsageError("fleet: give the directory of Parquet exports")
    if args.top < 1:
        raise UsageError("fleet: --top must be at least 1")
    params = fleet.Params(bucket_unit=args.every, top_n=args.top)
    if args.since:
        params.since = fleet.parse_time(args.since, "--since")
    if args.until:
        params.until = fleet.parse_time(args.until, "--until")
        if params.until <= params.since:
            raise UsageError("fleet: --until is not after --since")
    if args.builds:
        if args.before or args.after:
            raise UsageError("fleet: compare either --builds or --before/--after, not both")
        if args.builds[0] == args.builds[1]:
            raise UsageError("fleet: --builds needs two different builds")
        params.compare, params.builds = "build", (args.builds[0], args.builds[1])
    elif bool(args.before) != bool(args.after):
        raise UsageError("fleet: --before and --after go together")
    elif args.before:
        params.before = fleet.parse_period(args.before, "--before")
        params.after = fleet.parse_period(args.after, "--after")
    html_path = Path(args.html) if args.html else None
    if html_path is not None:
        if html_path.is_dir():
            raise UsageError(f"fleet: --html {html_path} is a directory; give a file name")
        if not (html_path.parent if str(html_path.parent) else Path(".")).is_dir():
            raise UsageError(f"fleet: directory {html_path.parent} does not exist")

    engine = fleet.make_engine(args.engine)
    try:
        d = fleet.fleet_report(args.dir, params, engine)
    finally:
        engine.close()
    if html_path is not None:
        from autoglm_trace.analysis.fleet_render import write_fleet_html

        try:
            write_fleet_html(d, str(html_path))
        except OSError as e:
            raise WriteError(f"cannot write {html_path}: {e.strerror or e}") from None
    if args.json:
        json.dump(d, sys.stdout, indent=2, default=str)
        sys.stdout.write("\n")
    else:
        from autoglm_trace.analysis.fleet_render import render_fleet
        from autoglm_trace.analysis.render import print_markup

        print_markup(render_fleet(d))
        if html_path is not None:
            print(f"wrote {html_path}")
    return 0
