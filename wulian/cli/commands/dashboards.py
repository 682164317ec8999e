"""``wulian dashboards build|push|verify|grants``: Grafana dashboards as code.

- ``build`` writes the JSON files the provisioning provider reads (deploy/grafana/dashboards/).
- ``push --url --token [--dry-run]`` upserts them into a running Grafana (folder per stream, by uid).
- ``verify [--json] [--from now-6h] [--to now] [--role wulian_grafana] [--var region=a,b]`` expands
  every panel's SQL as Grafana's PostgreSQL datasource would and runs it against the database, then again
  with each multi-value variable selecting nothing (``--var device=`` selects nothing explicitly).
- ``grants [--write|--new]`` prints the read-only role's SQL, rewrites the newest grants migration, or
  adds a new one (core/sql/NNNN_grafana_readonly*.sql) when panels start reading a new table.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import sys
from dataclasses import asdict
from datetime import datetime, timezone


def _build(args: argparse.Namespace) -> int:
    from wulian.dashboards.build import OUT_DIR, build
    from wulian.settings import get_settings

    streams = asyncio.run(_registry_defs(args.dsn)) if args.dsn else None  # None: the shipped profiles
    paths = build(args.out or OUT_DIR, get_settings().dashboards, streams=streams)
    print(json.dumps({"written": [str(p) for p in paths]}, ensure_ascii=False))
    return 0


async def _registry_defs(dsn: str, con=None) -> list:
    """The registry streams in the database (their dashboard specs)."""
    import asyncpg

    from wulian.ingest.stream_registry import load

    own = con is None
    con = con or await asyncpg.connect(dsn)
    try:
        return list((await load(con)).streams.values())
    finally:
        if own:
            await con.close()


def _push(args: argparse.Namespace) -> int:
    from wulian.dashboards.push import push
    from wulian.settings import get_settings

    actions = push(args.url, args.token, dry_run=args.dry_run, s=get_settings().dashboards)
    print(json.dumps({"dry_run": args.dry_run, "dashboards": [asdict(a) for a in actions]}, ensure_ascii=False))
    return 0


def _grants(args: argparse.Namespace) -> int:
    from wulian.dashboards.build import grants_sql, write_grants

    if args.write or args.new:
        print(write_grants(new=args.new))
    else:
        sys.stdout.write(grants_sql())
    return 0


async def _verify_async(args: argparse.Namespace) -> int:
    import asyncpg

    from wulian.dashboards.build import rendered
    from wulian.dashboards.verify import TimeRange, parse_time, verify
    from wulian.settings import get_settings

    now = datetime.now(timezone.utc)
    rng = TimeRange(parse_time(args.time_from, now), parse_time(args.time_to, now))
    chosen = {}
    for item in args.var or []:
        name, _, values = item.partition("=")
        chosen[name] = [v for v in values.split(",") if v]  # NAME= selects nothing
    settings = get_settings()
    con = await asyncpg.connect(args.dsn or settings.db.dsn)
    try:
        from wulian.dashboards.render import render
        from wulian.dashboards.streams import stream_dashboards

        extra = stream_dashboards(await _registry_defs("", con))  # registry streams' dashboards too
        docs = rendered(settings.dashboards) + [render(d, settings.dashboards) for d in extra]
        if args.dashboard:
            docs = [d for d in docs if d["uid"] in args.dashboard]
        report = await verify(con, docs, rng, chosen=chosen, role=args.role or None,
                              empty_selection=not args.no_empty_pass)
    finally:
        await con.close()
    if args.json:
        print(json.dumps(report.to_dict() if args.details else
                         {**report.summary(), "problems": [asdict(r) for r in report.results if r.status != "ok"]},
                         ensure_ascii=False, default=str))
    else:
        for r in report.results:
            line = f"{r.status:6} {r.dashboard}#{r.panel_id} {r.title} ({r.rows} rows, {r.ms} ms)"
            print(line + (f": {r.error}" if r.error else ""))
        print(json.dumps(report.summary()))
    s = report.summary()
    return 1 if s["failed"] or (args.strict and s["empty"]) else 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("dashboards", help="Grafana dashboards: build JSON, push to Grafana, verify queries")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")

    b = actions.add_parser("build", help="write the dashboard JSON files for provisioning")
    b.add_argument("--out", type=lambda s: __import__("pathlib").Path(s), default=None)
    b.add_argument("--dsn", default=None,
                   help="build the registry streams' dashboards from this database (default: the shipped profiles)")
    b.set_defaults(func=_build)

    u = actions.add_parser("push", help="upsert the dashboards into a running Grafana")
    u.add_argument("--url", required=True, help="Grafana base URL, e.g. http://grafana:3000")
    u.add_argument("--token", default=None, help="service account token (Editor or Admin)")
    u.add_argument("--dry-run", action="store_true", help="print what would be pushed, touch nothing")
    u.set_defaults(func=_push)

    v = actions.add_parser("verify", help="run every panel query against the database")
    v.add_argument("--json", action="store_true", help="one JSON object: counts and the panels not ok")
    v.add_argument("--details", action="store_true", help="with --json: every panel's result")
    v.add_argument("--from", dest="time_from", default="now-6h", help="now-6h, now-1d or ISO 8601")
    v.add_argument("--to", dest="time_to", default="now")
    v.add_argument("--role", default="wulian_grafana",
                   help="run as this role (SET ROLE), as Grafana would; '' for the connecting user")
    v.add_argument("--var", action="append", help="NAME=v1,v2 (default: All, or the first option)")
    v.add_argument("--dashboard", action="append", help="only this uid (repeatable)")
    v.add_argument("--dsn", default=None, help="default: WULIAN_DB__DSN")
    v.add_argument("--strict", action="store_true", help="exit 1 on empty panels too")
    v.add_argument("--no-empty-pass", action="store_true",
                   help="skip re-running every panel with each multi-value variable selecting nothing")
    v.set_defaults(func=lambda args: asyncio.run(_verify_async(args)))

    g = actions.add_parser("grants", help="SQL for the read-only Grafana role, from the dashboards")
    g.add_argument("--write", action="store_true",
                   help="rewrite the newest core/sql/NNNN_grafana_readonly*.sql (not yet applied anywhere)")
    g.add_argument("--new", action="store_true",
                   help="add a new grants migration (after the table set changed and the last was applied)")
    g.set_defaults(func=_grants)
