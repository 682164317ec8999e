"""``wulian chaos [--json] [--quick] [--cluster [--front-door nats|mosquitto]] [--broker-kill]``: inject
faults while sources publish; count what was lost.

A throwaway PostgreSQL+TimescaleDB and Mosquitto (deploy/local/stack.sh in a private dir on free ports)
and ingest as a process (``--cluster``: a private 3-node NATS cluster, 2 routers, 2 workers); never the
developer's stack. ``--broker-kill`` measures only the MQTT brokers: kill -9 with a queue, per candidate.
See ``ingest.chaos``."""
from __future__ import annotations

import argparse
import asyncio
import json


def _frontdoor(args: argparse.Namespace) -> int:
    from wulian.ingest.chaos.frontdoor import measure_all
    from wulian.ingest.chaos.run import progress_stderr

    results = measure_all(args.messages, progress=progress_stderr)
    if args.json:
        print(json.dumps({"messages": args.messages, "candidates": results}))
    else:
        for r in results:
            print(f"{r['candidate']:>34}: published {r['published']:>6} kept {r['kept']:>6} lost {r['lost']:>6}"
                  f" at {r['publish_per_s']:>8.0f} msg/s")
    return 0


def run(args: argparse.Namespace) -> int:
    from wulian.ingest.chaos.faults import standard_faults
    from wulian.ingest.chaos.run import ChaosConfig, run_chaos

    if args.broker_kill:
        return _frontdoor(args)
    if args.cluster:
        from wulian.ingest.chaos.cluster import cluster_config, run_cluster_chaos
        from wulian.settings import get_settings

        args.front_door = args.front_door or get_settings().cluster.front_door
        base = cluster_config(args.quick, args.front_door)
    else:
        base = ChaosConfig.quick() if args.quick else ChaosConfig()
        base.faults = standard_faults(args.quick, args.db_down)
    if args.rate:
        base.rate_msgs = args.rate
    if args.devices:
        base.devices = args.devices
    if args.field_devices is not None and not args.cluster:
        base.field_devices = args.field_devices
    if args.pending_rule:
        base.pending_rule = True
    if args.only:
        wanted = set(args.only.split(","))
        base.faults = [f for f in base.faults if f.name in wanted]
    if args.cluster:
        result = asyncio.run(run_cluster_chaos(base, keep_dir=args.keep, front_door=args.front_door))
    else:
        result = asyncio.run(run_chaos(base, keep_dir=args.keep))
    if args.json:
        print(json.dumps(result))
    else:
        for f in result["faults"]:
            print(f"{f['fault']:>18}: published {f['published']:>7} stored {f['stored']:>7} lost {f['lost']:>4}"
                  f" duplicates {f['duplicates']:>4} alerts expected {f['alerts_expected']:>4} raised twice"
                  f" {f['alerts_raised_twice']:>3} missed {f['alerts_missed']:>3}"
                  + (f" takeover {max(f['takeover_s']):.2f}s" if f.get("takeover_s") else ""))
            for proto, g in f["field"].items():
                print(f"{'via ' + proto:>18}: answered  {g['published']:>7} stored {g['stored']:>7} lost {g['lost']:>4}"
                      f" duplicates {g['duplicates']:>4}")
        if result.get("takeover_p99_s") is not None:
            print(f"partition takeover p99: {result['takeover_p99_s']:.2f}s")
    return 0 if result["ok"] else 1


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("chaos", help="fault-injection run: kill ingest, restart or kill the broker, stop the "
                                     "database, restart gateways (--cluster: workers, routers, NATS nodes)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--quick", action="store_true", help="short phases, database down 5 s")
    p.add_argument("--cluster", action="store_true",
                   help="cluster mode: 3 NATS nodes, 2 routers, 2 workers; kill worker/router/NATS node, add a worker")
    p.add_argument("--front-door", choices=["mosquitto", "nats"], default=None,
                   help="--cluster: devices publish to the NATS nodes' MQTT listener (the lossless one) or to"
                        " Mosquitto (routers: $share); default: the cluster.front_door setting (nats)")
    p.add_argument("--broker-kill", action="store_true",
                   help="only measure the MQTT front door: kill -9 with queued QoS 1 messages, per broker candidate")
    p.add_argument("--messages", type=int, default=20000, help="--broker-kill: QoS 1 messages queued before the kill")
    p.add_argument("--rate", type=float, default=0, help="messages/s per fault phase")
    p.add_argument("--devices", type=int, default=0, help="devices per fault phase")
    p.add_argument("--field-devices", type=int, default=None,
                   help="HJ 212 stations and JT/T 808 terminals through the gateways per fault (0: no gateways)")
    p.add_argument("--db-down", type=float, default=None, help="seconds PostgreSQL stays down")
    p.add_argument("--pending-rule", action="store_true",
                   help="also a rule with a pending window (always on with --cluster)")
    p.add_argument("--only", default="", help="comma-separated fault names")
    p.add_argument("--keep", action="store_true", help="keep the stack dir (logs) afterwards")
    p.set_defaults(func=run)
