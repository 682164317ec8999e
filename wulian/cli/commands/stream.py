"""``wulian stream list|show NAME|add FILE.json|add --profile NAME``: the stream registry (core.streams). ``add`` creates a
scalar stream with its default rules (audited); running ingest and API processes pick it up on NOTIFY."""
from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path

import asyncpg

from wulian.settings import get_settings


async def _run(args: argparse.Namespace) -> int:
    from wulian.core.streams import StreamDef, StreamError
    from wulian.ingest.audit import cli_actor
    from wulian.ingest.stream_registry import create_stream, load

    con = await asyncpg.connect(get_settings().db.dsn)
    try:
        if args.action == "add":
            try:
                if args.profile:
                    from wulian.core.streams_profiles import PROFILES

                    if args.profile not in PROFILES:
                        raise StreamError(f"no profile {args.profile!r} (profiles: {', '.join(PROFILES)})")
                    sdef = StreamDef.from_dict(PROFILES[args.profile])
                else:
                    sdef = StreamDef.from_dict(json.loads(Path(args.target).read_text(encoding="utf-8")))
            except (OSError, ValueError, StreamError) as exc:
                print(json.dumps({"error": str(exc)}, ensure_ascii=False))
                return 2
            try:
                async with con.transaction():
                    rule_ids = await create_stream(con, sdef, actor=cli_actor(), source="cli")
            except asyncpg.UniqueViolationError:
                print(json.dumps({"error": f"stream {sdef.name!r} exists"}))
                return 2
            print(json.dumps({"created": sdef.name, "rule_ids": rule_ids}))
            return 0
        registry = await load(con)
        if args.action == "show":
            if args.target not in registry:
                print(json.dumps({"error": f"stream {args.target!r} not found"}))
                return 1
            print(json.dumps(registry.streams[args.target].to_dict(), ensure_ascii=False, indent=2))
        else:
            for name in registry.names():
                d = registry.streams[name]
                print(f"{name}\t{'builtin' if d.builtin else 'registry'}\t{len(d.metrics)} metrics\t{d.title or ''}")
    finally:
        await con.close()
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("stream", help="list, show or add streams (the stream registry)")
    p.add_argument("action", choices=["list", "show", "add"])
    p.add_argument("target", nargs="?", help="show: a stream name; add: a JSON file (see /v1/streams)")
    p.add_argument("--profile", default=None,
                   help="add: a shipped profile instead of a file (coldchain, charging, energy, equipment)")
    p.set_defaults(func=lambda a: asyncio.run(_run(a)) if a.action == "list" or a.target or a.profile else 2)
