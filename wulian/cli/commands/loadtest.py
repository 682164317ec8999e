"""``wulian loadtest``: a city's device mix at real rates, time-compressed step by step until ingest
lags (method: ``wulian.cli.benches.city_load``)."""
from __future__ import annotations

import argparse
import asyncio

from wulian.settings import get_settings


def run(args: argparse.Namespace) -> int:
    from wulian.cli.benches import emit
    from wulian.cli.benches.city_load import options_from, run_loadtest
    from wulian.simulators.city_mix import load_mix, packaged_mix

    if args.step_s <= 0 or args.max_factor < 1 or not 0 < args.min_factor <= 1 or args.publishers < 1:
        raise ValueError("need --step-s > 0, --max-factor >= 1, 0 < --min-factor <= 1 and --publishers >= 1")
    mix = load_mix(args.mix) if args.mix else packaged_mix(args.city)
    out = asyncio.run(run_loadtest(get_settings(), mix, options_from(args)))
    if not args.json:
        emit({k: v for k, v in out.items() if k not in ("steps", "mix")}, False)
        for st in out["steps"]:
            lat = st["alarm_latency"]
            print(f"  factor {st['factor']:>6g}: offered {st['offered_msgs_per_s']:>10,.0f} msgs/s "
                  f"{st['offered_rows_per_s']:>10,.0f} rows/s | stored {st['stored_msgs_per_s']:>10,.0f} msgs/s | "
                  f"alarm p99 {lat['p99_ms']} ms | {'sustained' if st['sustained'] else 'LAGS'}")
        return 0
    emit(out, True)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("loadtest", help="a city's device mix at real rates, compressed until ingest lags: headroom")
    p.add_argument("--json", action="store_true")
    p.add_argument("--city", default="shantou", help="packaged mix (simulators/data/mixes/CITY.toml)")
    p.add_argument("--mix", default=None, help="a mix file of your own (TOML, as the packaged ones)")
    p.add_argument("--step-s", type=float, default=30.0, help="wall seconds each factor is held")
    p.add_argument("--max-factor", type=float, default=16.0, help="highest time-compression factor tried")
    p.add_argument("--min-factor", type=float, default=0.125, help="lowest factor tried when factor 1 lags")
    p.add_argument("--probe-every", type=float, default=0.5, help="seconds between alarm-latency probes")
    p.add_argument("--probe-timeout", type=float, default=10.0, help="seconds a probe waits for its alert")
    p.add_argument("--drain-s", type=float, default=300.0, help="longest wait for a backlog to be stored")
    p.add_argument("--warmup-s", type=float, default=5.0, help="seconds at factor 1 before the first step")
    p.add_argument("--publishers", type=int, default=2,
                   help="publisher processes sharing the devices (the publisher must not be what lags)")
    p.add_argument("--keep-db", action="store_true", help="keep the run's database (its name is in the output)")
    p.set_defaults(func=run)
