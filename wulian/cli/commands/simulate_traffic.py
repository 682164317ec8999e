"""``wulian simulate-traffic``: Los-loop detectors replayed over MQTT, time-compressed, with incidents."""
from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import sys
import time
from pathlib import Path

from wulian.core.timebase import NS_PER_S, as_china
from wulian.settings import get_settings


def _start_ns(text: str) -> int:
    """ISO 8601; without an offset it is China time (the roads' local time)."""
    return int(as_china(dt.datetime.fromisoformat(text)).timestamp()) * NS_PER_S


async def _register(dsn: str, region: str, replay) -> dict:
    import asyncpg

    from wulian.simulators.traffic_replay import register_segments

    con = await asyncpg.connect(dsn)
    try:
        return await register_segments(con, region, replay)
    finally:
        await con.close()


def run(args: argparse.Namespace) -> int:
    from wulian.core.traffic.online import parse_incident_spec
    from wulian.ingest.service import mqtt_params
    from wulian.simulators.traffic_replay import (
        ReplayPlan, default_start_ns, load_replay, resolve_segment, run_replay, with_incident,
    )

    s = get_settings()
    data_dir = args.data or s.traffic.data_dir  # None: the packaged Los-loop week
    try:
        replay = load_replay(data_dir, sensors=args.sensors, prefix=args.prefix)
        for spec in args.incident or []:
            seg, row = parse_incident_spec(spec)
            replay = with_incident(replay, resolve_segment(replay, seg), row, args.incident_duration, args.severity)
    except (OSError, ValueError) as exc:
        print(f"simulate-traffic: {exc}", file=sys.stderr)
        return 2
    region = args.region or s.sim.region
    end = replay.rows if args.rows <= 0 else min(replay.rows, args.first_row + args.rows)
    start = _start_ns(args.start) if args.start else default_start_ns(time.time_ns(), end)
    if not args.no_register:
        try:
            out = asyncio.run(_register(s.db.dsn, region, replay))
        except ValueError as exc:
            print(f"simulate-traffic: {exc}", file=sys.stderr)
            return 2
        print(f"[traffic-replay] registered {out['segments']} segments, {out['links']} road links in {region}",
              file=sys.stderr)
    plan = ReplayPlan(region=region, start_ns=start, first_row=args.first_row, n_rows=args.rows,
                      history_rows=int(args.history_days * 288), speedup=args.speedup, prefix=s.mqtt.topic_prefix)
    print(f"[traffic-replay] {len(replay.segment_ids)} segments, rows {args.first_row}..{end - 1}, row 0 at "
          f"{dt.datetime.fromtimestamp(start / 1e9, dt.timezone.utc).isoformat()}", file=sys.stderr)
    try:
        out = run_replay(mqtt_params(s, client_id=f"wulian-traffic-replay-{region}"), replay, plan)
    except KeyboardInterrupt:
        return 0
    print(json.dumps(out))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("simulate-traffic", help="replay the Los-loop detectors over MQTT (time-compressed)")
    p.add_argument("--data", type=Path, default=None, help="directory with los_speed.csv and los_adj.csv, plain or .xz "
                        "(default WULIAN_TRAFFIC__DATA_DIR, else the Los-loop week shipped with wulian)")
    p.add_argument("--region", default=None, help="region of the segments (default WULIAN_SIM__REGION)")
    p.add_argument("--prefix", default="los-", help="segment id = prefix + sensor id (default 'los-')")
    p.add_argument("--sensors", type=int, default=0, help="a connected subset of this many sensors (0: all 207)")
    p.add_argument("--start", default=None,
                   help="stamp of data row 0, ISO 8601, China time without offset (default: a Thursday "
                        "midnight early enough that the replay lies in the past)")
    p.add_argument("--first-row", type=int, default=0, help="first data row to publish")
    p.add_argument("--rows", type=int, default=0, help="rows to publish (0: to the end of the week)")
    p.add_argument("--history-days", type=float, default=0.0,
                   help="publish this many days from the first row at once (batched), then replay")
    p.add_argument("--speedup", type=float, default=1.0,
                   help="5-minute rows per second (0: as fast as the broker acknowledges)")
    p.add_argument("--incident", action="append", metavar="SEGMENT@ROW",
                   help="inject a speed collapse on SEGMENT (sensor id, los-<id> or column) from data row ROW; "
                        "repeatable")
    p.add_argument("--incident-duration", type=int, default=12, help="rows the collapse lasts (default 12 = 1 h)")
    p.add_argument("--severity", type=float, default=0.35, help="speed factor during the collapse (default 0.35)")
    p.add_argument("--no-register", action="store_true", help="do not write the segments and road graph to the DB")
    p.set_defaults(func=run)
