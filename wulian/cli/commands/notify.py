"""``wulian notify run|test CHANNEL``: the notification sender (outbox -> WeCom/DingTalk/Feishu/webhooks)."""
from __future__ import annotations

import argparse
import asyncio
import sys

from wulian.settings import get_settings


def run(args: argparse.Namespace) -> int:
    from wulian.cli.stop_signal import stop_event_on_signals
    from wulian.ingest.notify_sender import run_sender

    async def main() -> None:
        await run_sender(get_settings(), stop_event_on_signals())

    try:
        asyncio.run(main())
    except KeyboardInterrupt:  # a second signal
        pass
    return 0


def test(args: argparse.Namespace) -> int:
    import asyncpg
    import httpx

    from wulian.ingest.notify_sender import send_test

    async def go() -> str | None:
        s = get_settings()
        con = await asyncpg.connect(s.db.dsn)
        try:
            async with httpx.AsyncClient(timeout=s.notify.timeout_s) as client:
                return await send_test(con, args.channel, client)
        finally:
            await con.close()

    try:
        error = asyncio.run(go())
    except LookupError as exc:
        print(f"wulian notify test: {exc.args[0]}", file=sys.stderr)
        return 2
    if error:
        print(f"wulian notify test: channel {args.channel!r} did not take the message: {error}", file=sys.stderr)
        return 1
    print(f"test message delivered on channel {args.channel!r}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("notify", help="notification sender: deliver alert notifications, escalate, test a channel")
    nsub = p.add_subparsers(dest="notify_command", required=True)
    r = nsub.add_parser("run", help="run the sender (outbox delivery with retries, escalation)")
    r.set_defaults(func=run)
    t = nsub.add_parser("test", help="send a test message on a channel now")
    t.add_argument("channel", help="the channel's name (/v1/channels)")
    t.set_defaults(func=test)
