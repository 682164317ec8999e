"""``wulian api``: serve the FastAPI app with uvicorn."""
from __future__ import annotations

import argparse
import asyncio

from wulian.settings import get_settings


async def _check_database(dsn: str) -> None:
    """Fail before serving when the database is unreachable: one clear line from the CLI instead of
    uvicorn's logged lifespan traceback."""
    import asyncpg

    con = await asyncpg.connect(dsn, timeout=10)
    await con.close()


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from wulian.api.app import create_app

    s = get_settings()
    asyncio.run(_check_database(s.db.dsn))
    tls = {}
    if s.api.tls_certfile and s.api.tls_keyfile:
        tls = {"ssl_certfile": str(s.api.tls_certfile), "ssl_keyfile": str(s.api.tls_keyfile)}
    # log_config=None: uvicorn logs through the root handlers, so the secret-redacting filter applies
    uvicorn.run(create_app(s), host=s.api.host, port=s.api.port, log_level=s.log_level.lower(), log_config=None,
                **tls)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("api", help="serve the regulator/operator HTTP API")
    p.set_defaults(func=run)
