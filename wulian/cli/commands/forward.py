"""``wulian forward hj212|upstream|station``: forward key pollution sources' HJ 212 data upstream (数据转发)."""
from __future__ import annotations

import argparse
import asyncio
import sys

from wulian.settings import get_settings


def run(args: argparse.Namespace) -> int:
    import os
    import socket

    from wulian.ingest.forwarder import FORWARD_LEASE, run_forwarder
    from wulian.ingest.leases import Lease

    from wulian.cli.stop_signal import stop_event_on_signals

    async def main() -> None:
        # SIGINT/SIGTERM end the run through its stop event: links and intake finish their step and
        # the MQTT session is closed (cancelling the task instead left the process running)
        stop = stop_event_on_signals()
        settings = get_settings()
        # one forwarder at a time (its MQTT session and each upstream's in-order link are singletons);
        # a second one on another machine stands by and takes over when the holder dies
        lease = Lease(settings.db.dsn, FORWARD_LEASE, f"forward-{socket.gethostname()}-{os.getpid()}")
        await lease.run(lambda: run_forwarder(settings, stop), stop)

    asyncio.run(main())
    return 0


def _with_con(fn):
    import asyncpg

    async def go():
        con = await asyncpg.connect(get_settings().db.dsn)
        try:
            return await fn(con)
        finally:
            await con.close()
    return asyncio.run(go())


def upstream(args: argparse.Namespace) -> int:
    from wulian.ingest.forwarder import add_upstream

    uid = _with_con(lambda con: add_upstream(con, args.name, args.host, args.port))
    print(f"upstream {args.name!r} (id {uid}) -> {args.host}:{args.port}")
    return 0


def station(args: argparse.Namespace) -> int:
    from wulian.ingest.forwarder import add_station

    try:
        _with_con(lambda con: add_station(con, args.upstream, args.device_id, args.upstream_mn, args.upstream_pw))
    except LookupError as exc:
        print(f"wulian forward station: {exc.args[0]}", file=sys.stderr)
        return 2
    print(f"{args.device_id} forwarded to {args.upstream!r} as MN {args.upstream_mn}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("forward", help="forward HJ 212 data of key pollution sources to upstream platforms")
    fsub = p.add_subparsers(dest="forward_command", required=True)
    fsub.add_parser("hj212", help="run the forwarder (persistent outbox, in order, resumes)").set_defaults(func=run)
    u = fsub.add_parser("upstream", help="add or change an upstream platform")
    u.add_argument("name")
    u.add_argument("host")
    u.add_argument("port", type=int)
    u.set_defaults(func=upstream)
    s = fsub.add_parser("station", help="forward a station to an upstream under the upstream's MN/PW")
    s.add_argument("upstream")
    s.add_argument("device_id")
    s.add_argument("upstream_mn")
    s.add_argument("upstream_pw")
    s.set_defaults(func=station)
