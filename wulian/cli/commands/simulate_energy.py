"""``wulian simulate-energy``: register and publish the energy and transport scenario (vehicles with a
fatigue case, a night coach, a geofence breach and an offline jump; feeders with a sag and an outage;
households with a leak and a tampered meter), stamped over the last day(s) up to now."""
from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time

from wulian.settings import get_settings


async def _register(dsn: str, sc, region: str) -> None:
    import asyncpg

    from wulian.simulators.energy_transport import register

    con = await asyncpg.connect(dsn)
    try:
        async with con.transaction():
            await register(con, sc, region)
    finally:
        await con.close()


def run(args: argparse.Namespace) -> int:
    from wulian.ingest.service import mqtt_params
    from wulian.simulators.energy_transport import build_scenario, publish

    s = get_settings()
    region = args.region or s.sim.region
    sc = build_scenario(time.time_ns(), tag=args.tag, seed=args.seed, vehicle_step_s=args.vehicle_step,
                        meter_days=args.meter_days)
    if args.dry_run:
        print(json.dumps({"devices": len(sc.devices), "records": sc.count(), "expect": sc.expect}))
        return 0
    asyncio.run(_register(s.db.dsn, sc, region))
    print(f"[simulate-energy] {len(sc.devices)} devices, {sc.count()} records", file=sys.stderr, flush=True)
    out = publish(sc, mqtt_params(s, client_id=f"wulian-sim-energy-{args.tag}"), region, s.mqtt.topic_prefix)
    out["expect"] = sc.expect
    print(json.dumps(out))
    return 0 if out["complete"] else 1


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("simulate-energy", help="publish the energy/transport scenario (time-compressed, recent past)")
    p.add_argument("--region", default=None, help="region of the devices (default: WULIAN_SIM__REGION)")
    p.add_argument("--tag", default="ET", help="prefix of the device ids")
    p.add_argument("--seed", type=int, default=6)
    p.add_argument("--vehicle-step", type=float, default=10.0, help="seconds between vehicle positions")
    p.add_argument("--meter-days", type=int, default=4, help="days of household registers")
    p.add_argument("--dry-run", action="store_true", help="build the scenario and print its size only")
    p.set_defaults(func=run)
