"""``wulian gateway hj212|jt808``: the TCP gateway for HJ 212 stations or JT/T 808 terminals."""
from __future__ import annotations

import argparse
import asyncio
import resource

from wulian.settings import get_settings


def raise_nofile() -> int:
    """Lift the soft open-files limit to the hard one (a gateway holds one socket per device)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def run(args: argparse.Namespace) -> int:
    from wulian.cli.stop_signal import stop_event_on_signals
    from wulian.ingest.gateways.service import run_gateway
    from wulian.ingest.service import tune_gc

    s = get_settings()
    if args.port is not None:
        setattr(s.gateway, f"{args.protocol}_port", args.port)
    if args.auto_provision:
        s.gateway.auto_provision = True
    raise_nofile()
    tune_gc()  # thousands of long-lived connections: full collections would stall every answer
    async def main() -> None:
        await run_gateway(s, args.protocol, stop_event_on_signals())

    try:
        asyncio.run(main())
    except KeyboardInterrupt:  # a second signal
        pass
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("gateway", help="run the HJ 212 or JT/T 808 TCP gateway (devices -> MQTT)")
    p.add_argument("protocol", choices=["hj212", "jt808"])
    p.add_argument("--port", type=int, default=None, help="listen port (default: settings)")
    p.add_argument("--auto-provision", action="store_true", help="register unknown devices on first contact")
    p.set_defaults(func=run)
