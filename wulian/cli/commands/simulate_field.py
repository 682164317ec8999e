"""``wulian simulate-field``: HJ 212 stations and JT/T 808 terminals talking to the gateways over TCP.

``--provision`` first registers the simulated devices in the registry (stations with their PW,
terminals so that their 0x0100 registration is accepted); otherwise run the gateways with
auto-provisioning, or provision them with ``wulian device add``.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time

from wulian.settings import Settings, get_settings


async def _provision(s: Settings, stations: list[str], phones: list[str], pw: str) -> None:
    import asyncpg

    from wulian.ingest.device_secrets import HJ212_PW
    from wulian.ingest.device_store import DeviceSpec, upsert_many

    region = s.gateway.region
    specs = [DeviceSpec(mn, region, "pollution", "hj212", secrets={HJ212_PW: pw}) for mn in stations]
    specs += [DeviceSpec(p, region, "vehicle", "jt808") for p in phones]
    con = await asyncpg.connect(s.db.dsn)
    try:
        await upsert_many(con, specs)
    finally:
        await con.close()


async def _main(args: argparse.Namespace, s: Settings) -> dict:
    from wulian.simulators.field_devices import Hj212Station, Jt808Terminal, station_ids, terminal_phones

    stations = station_ids(args.stations, args.seed)
    phones = terminal_phones(args.terminals, args.seed)
    if args.provision:
        await _provision(s, stations, phones, args.pw)
    stop = asyncio.Event()
    g = s.gateway
    devs_h = [Hj212Station(mn, args.pw, seed=i) for i, mn in enumerate(stations)]
    devs_j = [Jt808Terminal(p, seed=i) for i, p in enumerate(phones)]
    spread = args.interval / max(1, len(devs_j))
    tasks = [asyncio.create_task(d.run(g.host, g.hj212_port, args.interval, stop)) for d in devs_h]
    tasks += [asyncio.create_task(d.run(g.host, g.jt808_port, args.interval, stop, first_delay_s=i * spread))
              for i, d in enumerate(devs_j)]
    t0 = time.monotonic()
    try:
        while args.duration <= 0 or time.monotonic() - t0 < args.duration:
            await asyncio.sleep(min(5.0, args.duration or 5.0))
            h = sum(d.stats.answered for d in devs_h)
            j = sum(d.stats.answered for d in devs_j)
            print(f"[simulate-field] answered: hj212 {h}, jt808 {j}", file=sys.stderr, flush=True)
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)

    def total(devs):
        return {k: sum(getattr(d.stats, k) for d in devs)
                for k in ("connects", "sent", "answered", "resent", "failed", "refused")}

    return {"hj212": total(devs_h), "jt808": total(devs_j)}


def run(args: argparse.Namespace) -> int:
    from wulian.cli.commands.gateway import raise_nofile

    raise_nofile()
    try:
        out = asyncio.run(_main(args, get_settings()))
    except KeyboardInterrupt:
        return 0
    print(json.dumps(out))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("simulate-field", help="HJ 212 stations and JT/T 808 terminals talking to the gateways")
    p.add_argument("--stations", type=int, default=5)
    p.add_argument("--terminals", type=int, default=20)
    p.add_argument("--interval", type=float, default=10.0, help="seconds between uploads per device")
    p.add_argument("--duration", type=float, default=0.0, help="seconds (0: until Ctrl-C)")
    p.add_argument("--provision", action="store_true", help="register the simulated devices first")
    p.add_argument("--pw", default="123456", help="HJ 212 PW of the simulated stations")
    p.add_argument("--seed", type=int, default=1)
    p.set_defaults(func=run)
