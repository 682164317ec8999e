"""Helpers shared by the test modules (fixtures are in conftest.py, the services in services.py)."""
from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence

import httpx
from hypothesis import strategies as st

from wulian.api.app import create_app
from wulian.settings import Settings


def asgi_client(app, headers: dict[str, str] | None = None) -> httpx.AsyncClient:
    """An httpx client on the app in process (no socket)."""
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api", headers=headers)


@contextlib.asynccontextmanager
async def api_client(settings: Settings, headers: dict[str, str] | None = None) -> AsyncIterator[httpx.AsyncClient]:
    """The real API app with its lifespan run, and a client on it (``headers`` on every request)."""
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        async with asgi_client(app, headers) as c:
            yield c


def mutants(seeds: Sequence[bytes], special: bytes) -> st.SearchStrategy[bytes]:
    """Packets from ``seeds`` with one to four byte-level mutations: bit flips, inserts, deletes,
    truncation, or a byte replaced by one of the protocol's ``special`` bytes (delimiters, escapes)."""
    @st.composite
    def draw_mutant(draw) -> bytes:
        data = bytearray(draw(st.sampled_from(seeds)))
        for _ in range(draw(st.integers(1, 4))):
            op = draw(st.sampled_from(["flip", "insert", "delete", "truncate", "byte"]))
            pos = draw(st.integers(0, max(len(data) - 1, 0)))
            if op == "flip" and data:
                data[pos] ^= 1 << draw(st.integers(0, 7))
            elif op == "insert":
                data[pos:pos] = draw(st.binary(min_size=1, max_size=4))
            elif op == "delete" and data:
                del data[pos:pos + draw(st.integers(1, 8))]
            elif op == "truncate":
                del data[pos:]
            elif data:
                data[pos] = draw(st.sampled_from(special))
        return bytes(data)

    return draw_mutant()


async def disable_registry_stream_rules(dsn: str) -> None:
    """Disable the default rules of the streams a test created (registry streams, profiles): left enabled,
    their missing-data timers bind the devices of later tests (conftest's no_rule_left_for_other_tests)."""
    import asyncpg

    con = await asyncpg.connect(dsn)
    try:
        await con.execute("UPDATE rules SET enabled = false WHERE enabled AND coalesce(definition->>'device_id', '') = ''"
                          " AND definition->>'stream' IN (SELECT name FROM streams WHERE NOT builtin)")
    finally:
        await con.close()
