"""``wulian simulate``: a small city of devices publishing JSON telemetry over MQTT."""
from __future__ import annotations

import argparse
import json

from wulian.settings import get_settings


def run(args: argparse.Namespace) -> int:
    from wulian.core.const import Stream
    from wulian.ingest.service import mqtt_params
    from wulian.simulators.city import DEFAULT_FLEET, build_city
    from wulian.simulators.runner import RunConfig, run_fleet

    s = get_settings()
    counts = {st: max(0, int(round(n * args.scale))) for st, n in DEFAULT_FLEET.items()}
    if args.streams:
        keep = {Stream(x) for x in args.streams.split(",")}
        counts = {st: n for st, n in counts.items() if st in keep}
    if args.profile:  # registry streams: install first (`wulian stream add --profile NAME`)
        from wulian.core.streams_profiles import PROFILES
        from wulian.simulators.profiles import build_profile_fleet

        names = [x for x in args.profile.split(",") if x]
        unknown = [x for x in names if x not in PROFILES]
        if unknown:
            print(json.dumps({"error": f"no profile {unknown} (profiles: {', '.join(PROFILES)})"}))
            return 2
        fleet = [d for x in names for d in build_profile_fleet(x, max(1, int(round(5 * args.scale))), args.seed)]
    else:
        fleet = build_city(counts, seed=args.seed)
    cfg = RunConfig(region=s.sim.region, rate_hz=args.rate or s.sim.rate_hz,
                    duration_s=args.duration if args.duration is not None else s.sim.duration_s,
                    prefix=s.mqtt.topic_prefix, bad_rate=args.bad_rate)
    out = run_fleet(fleet, mqtt_params(s, client_id=f"wulian-sim-{args.seed}"), cfg)
    print(json.dumps(out))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("simulate", help="publish a simulated city of devices over MQTT")
    p.add_argument("--rate", type=float, default=None, help="messages per device per second")
    p.add_argument("--duration", type=float, default=None, help="seconds (0: until Ctrl-C)")
    p.add_argument("--scale", type=float, default=1.0, help="multiply the default fleet size")
    p.add_argument("--streams", default="", help="comma-separated subset of streams")
    p.add_argument("--profile", default="",
                   help="comma-separated shipped profiles (coldchain,charging,energy,equipment) instead of the city;"
                        " 5 devices each times --scale, the first misbehaving at fixed minutes of every hour")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--bad-rate", type=float, default=0.0, help="share of messages sent corrupted (dead letters)")
    p.set_defaults(func=run)
