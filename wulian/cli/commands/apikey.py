"""``wulian apikey create|revoke``: API keys for regulators, operators and admins (both audited)."""
from __future__ import annotations

import argparse
import asyncio
import json

import asyncpg

from wulian.settings import get_settings


async def _run(args: argparse.Namespace) -> int:
    from wulian.api.auth import create_key, revoke_key
    from wulian.ingest.audit import cli_actor

    con = await asyncpg.connect(get_settings().db.dsn)
    try:
        if args.action == "create":
            regions = [r for r in (args.regions or "").split(",") if r]
            key = await create_key(con, name=args.name, role=args.role, regions=regions,
                                   expires_days=args.expires_days, audit_actor=cli_actor())
            print(json.dumps({"key": key, "role": args.role, "regions": regions or "all"}))
        else:
            ok = await revoke_key(con, args.key_id, actor=cli_actor(), source="cli")
            print(json.dumps({"revoked": ok}))
            return 0 if ok else 1
    except ValueError as exc:
        print(json.dumps({"error": str(exc)}))
        return 2
    finally:
        await con.close()
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("apikey", help="create or revoke API keys")
    p.add_argument("action", choices=["create", "revoke"])
    p.add_argument("--role", choices=["regulator", "operator", "admin"], default="regulator")
    p.add_argument("--regions", default="", help="comma-separated regions (empty: all, admin only)")
    p.add_argument("--name", default="cli")
    p.add_argument("--expires-days", type=float, default=None)
    p.add_argument("--key-id", default="", help="for revoke: the 12 hex chars after 'wl_'")
    p.set_defaults(func=lambda a: asyncio.run(_run(a)))
