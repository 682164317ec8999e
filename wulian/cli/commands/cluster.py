"""``wulian cluster up|down|status``, ``wulian router``, ``wulian worker``: cluster mode (NATS JetStream).

City mode (``wulian ingest``) stays the default; these run when the ingest is spread over machines.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket

from wulian.settings import Settings, get_settings


def cluster_dir(settings: Settings):
    return settings.stack.dir / "nats"


def nats_urls(settings: Settings) -> list[str]:
    """The configured servers (with ``cluster.nats_username``/``nats_password`` in them), else the local
    cluster's (``wulian cluster up``), with its service account."""
    c = settings.cluster
    if c.nats_urls:
        from wulian.ingest.jetstream import with_account

        if c.nats_username and c.nats_password:
            return [with_account(u, c.nats_username, c.nats_password) for u in c.nats_urls]
        return list(c.nats_urls)
    from wulian.ingest.nats_cluster import ClusterState

    state = ClusterState.load(cluster_dir(settings))
    if state is None:
        raise SystemExit("no NATS cluster configured: run `wulian cluster up` or set WULIAN_CLUSTER__NATS_URLS")
    return state.urls


def _cluster(args: argparse.Namespace) -> int:
    from wulian.ingest import jetstream as j
    from wulian.ingest import nats_cluster as nc

    settings = get_settings()
    cdir = cluster_dir(settings)
    if args.action == "accounts":
        return _accounts(args, cdir)
    if args.action == "up":
        nats_door = settings.cluster.front_door == "nats"
        state = nc.up(cdir, mqtt=nats_door, prefix=settings.mqtt.topic_prefix)

        async def stream() -> int:
            con = await j.connect(state.urls, "wulian-cluster-up")
            try:
                p = await j.ensure_stream(con, settings.cluster.partitions, settings.cluster.replicas)
                if nats_door:  # the routers' consumer exists before any device publishes
                    from wulian.ingest.nats_front_door import ensure_front_door, mqtt_hello

                    await asyncio.to_thread(mqtt_hello, "127.0.0.1", state.nodes[0].mqtt_port, 10.0,
                                            *state.mqtt_account)
                    await ensure_front_door(con, settings.mqtt.topic_prefix, settings.cluster.router_batch)
                return p
            finally:
                await con.close()

        p = asyncio.run(stream())
        print(f"NATS cluster up: {' '.join(state.addresses)}; stream {j.STREAM}, {p} partitions, "
              f"replicas {settings.cluster.replicas}")
        if nats_door:
            print("MQTT front door (MQTT 3.1.1): " + " ".join(f"127.0.0.1:{n.mqtt_port}" for n in state.nodes)
                  + "; device accounts: `wulian device add`")
        if args.routers or args.workers:
            nc.scale(state, args.routers, args.workers)
            print(f"started {args.routers} router(s), {args.workers} worker(s); logs in {cdir}/<name>.log")
        return 0
    if args.action == "down":
        print("NATS cluster stopped" if nc.down(cdir) else "no NATS cluster here")
        return 0
    st = nc.status(cdir)
    print(json.dumps(st, indent=1))
    healthy = st["running"] == len(st["nodes"]) and st["nodes"] and all(m["up"] for m in st["members"])
    return 0 if healthy else 3


def _accounts(args: argparse.Namespace, cdir) -> int:
    """Render the NATS front door's accounts file again from the store (``accounts.json``): to ``--out``
    (a node host's config dir, by whatever copies files there), or beside the store and reload the
    local nodes."""
    from pathlib import Path

    from wulian.ingest import nats_accounts as na
    from wulian.ingest import nats_cluster as nc

    try:
        path = na.write_include(cdir, Path(args.out) if args.out else None)
    except (ValueError, OSError) as exc:
        print(f"error: {exc}")
        return 2
    reloaded = 0 if args.out else nc.reload(cdir)
    print(f"NATS accounts written to {path}" + ("" if args.out else f"; {reloaded} local node(s) reloaded"))
    return 0


def _router(args: argparse.Namespace) -> int:
    from wulian.ingest.router import Router
    from wulian.ingest.service import mqtt_params

    s = get_settings()
    name = args.id or f"router-{socket.gethostname()}-{os.getpid()}"
    if s.cluster.front_door == "nats":
        from wulian.ingest.nats_front_door import NatsFrontDoorRouter

        router = NatsFrontDoorRouter(name, nats_urls(s), s.cluster.partitions, s.cluster.replicas,
                                     prefix=s.mqtt.topic_prefix, batch=s.cluster.router_batch, dsn=s.db.dsn)
    else:
        router = Router(mqtt_params(s, name), nats_urls(s), s.cluster.partitions, s.cluster.replicas,
                        prefix=s.mqtt.topic_prefix, batch=s.cluster.router_batch)
    try:
        asyncio.run(router.run())
    except KeyboardInterrupt:
        pass
    return 0


def _worker(args: argparse.Namespace) -> int:
    from wulian.ingest.migrations import migrate
    from wulian.ingest.service import ingest_config, mqtt_params
    from wulian.ingest.worker import Worker

    s = get_settings()
    c = s.cluster
    name = args.id or f"worker-{socket.gethostname()}-{os.getpid()}"
    worker = Worker(name, s.db.dsn, nats_urls(s),
                    c.partitions, c.replicas, ingest_config(s), batch=c.worker_batch,
                    takeover_delay_s=c.takeover_delay_s, rebalance_delay_s=c.rebalance_delay_s,
                    ack_wait_s=c.ack_wait_s, tick_interval_s=s.alarms.tick_interval_s,
                    rules_poll_s=s.alarms.rules_poll_s, auto_register=s.ingest.auto_register,
                    mqtt=mqtt_params(s, f"alerts-{name}"), retention_days=s.db.retention_days,
                    compress_after_days=s.db.compress_after_days)

    async def main() -> None:
        import asyncpg

        con = await asyncpg.connect(s.db.dsn)
        try:
            await migrate(con)
        finally:
            await con.close()
        await worker.run()

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
    return 0


def _count(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = -1
    if n < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {text!r}")
    return n


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("cluster", help="start/stop/inspect the local 3-node NATS JetStream cluster")
    p.add_argument("action", choices=["up", "down", "status", "accounts"],
                   help="accounts: render the NATS front door's accounts file again (see --out) and reload")
    p.add_argument("--out", help="accounts: write the file here (a node host's config dir) instead")
    p.add_argument("--routers", type=_count, default=0, help="up: also start N routers (r1..rN)")
    p.add_argument("--workers", type=_count, default=0, help="up: also start M workers (w1..wM)")
    p.set_defaults(func=_cluster)
    r = sub.add_parser("router", help="cluster mode: MQTT shared subscription -> JetStream partitions")
    r.add_argument("--id", help="MQTT client id (keep it across restarts: the broker holds its share)")
    r.set_defaults(func=_router)
    w = sub.add_parser("worker", help="cluster mode: JetStream partitions -> decode, alarms, database")
    w.add_argument("--id", help="worker name (shown as the owner of its partitions)")
    w.set_defaults(func=_worker)
