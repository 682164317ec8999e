"""``wulian simulate-env [--hours H] [--tag T] [--region R]``: register the environment fleet (sources,
boundary monitor, air stations, Lianjiang stations with their attrs) and publish a time-compressed
scenario - an exceedance episode, an AQI episode and a discharge pulse - stamped over the last H whole
hours, so ``wulian derive --once`` has whole hours to work on."""
from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time

from wulian.settings import get_settings


def run(args: argparse.Namespace) -> int:
    import asyncpg

    from wulian.ingest.mqtt_client import MqttPublisher
    from wulian.ingest.service import mqtt_params
    from wulian.simulators.environment import (
        Scenario,
        compressed_start,
        env_fleet,
        publish_records,
        register_devices,
        scenario_records,
    )

    s = get_settings()
    region = args.region or s.sim.region
    fleet = env_fleet(args.tag)

    async def _register() -> None:
        con = await asyncpg.connect(s.db.dsn)
        try:
            await register_devices(con, region, fleet)
        finally:
            await con.close()

    if not args.no_register:
        asyncio.run(_register())
    sc = Scenario(start_ns=compressed_start(time.time_ns(), args.hours), hours=args.hours, seed=args.seed)
    records = scenario_records(fleet, sc)
    print(f"[simulate-env] {sum(map(len, records.values()))} records for {len(fleet)} devices", file=sys.stderr)
    with MqttPublisher(mqtt_params(s, client_id=f"wulian-sim-env-{args.seed}"), max_inflight=2000) as pub:
        sent = publish_records(pub, region, fleet, records, s.mqtt.topic_prefix)
        pub.wait_acked(60.0)
        out = {"devices": len(fleet), "messages": sent, "acked": pub.acked, "refused": pub.refused,
               "region": region, "start": sc.start_ns // 1_000_000, "hours": sc.hours}
    print(json.dumps(out))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("simulate-env", help="environment fleet: exceedance, AQI episode, river pulse (compressed time)")
    p.add_argument("--hours", type=int, default=24, help="simulated hours, ending at the last whole hour")
    p.add_argument("--tag", default="", help="inserted in every device id (several fleets side by side)")
    p.add_argument("--region", default=None, help="default: WULIAN_SIM__REGION")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--no-register", action="store_true", help="do not write the registry rows")
    p.set_defaults(func=run)
