"""Streams as data (core.streams): anyone may read the registry; admins create, replace and delete streams
(audited). A new stream's
devices publish on ``wl/{region}/{stream}/{device}/telemetry`` as soon as ingest sees the NOTIFY - no
restart, no code. Built-in streams are listed but not editable (their tables and jobs are code)."""
from __future__ import annotations

from typing import Annotated, Any

import asyncpg
from fastapi import APIRouter, Body, Depends, Path, Response
from pydantic import BaseModel

from wulian.api.auth import CurrentUser
from wulian.api.deps import PoolDep
from wulian.api.errors import ApiError, BadQuery, NotFound
from wulian.api.paging import ListPage, Page, paging

from wulian.core.const import STREAM_PATTERN
from wulian.core.streams import StreamDef, StreamError
from wulian.ingest.stream_registry import (STREAM_COLUMNS, StreamInUse, create_stream, delete_stream, replace_stream,
                                           stream_def)

router = APIRouter(prefix="/v1/streams", tags=["streams"])


class Conflict(ApiError):
    status = 409
    code = "conflict"


class StreamPublic(BaseModel):
    name: str
    title: str | None
    builtin: bool
    scalar: bool
    metrics: dict[str, dict[str, Any]]  # {metric: {unit, min, max, description}}
    device_types: list[str]
    default_rules: list[dict[str, Any]]
    dashboard: dict[str, Any] | None
    rule_ids: list[int] = []  # on creation: the ids of the default rules created


class StreamsPublic(ListPage):
    data: list[StreamPublic]


@router.get("", response_model=StreamsPublic)
async def list_streams(pool: PoolDep, user: CurrentUser,
                       page: Annotated[Page, Depends(paging(default=100, maximum=1000, keyset=2))] = Page(100)):
    """Every stream, built-in ones first, then by name."""
    after = page.after
    async with pool.acquire() as con:
        rows = await con.fetch(
            f"SELECT {STREAM_COLUMNS} FROM streams WHERE $1::int IS NULL OR ((NOT builtin)::int, name) > ($1, $2)"
            " ORDER BY NOT builtin, name LIMIT $3", after and int(after[0]), after and str(after[1]), page.fetch)
    rows, nxt = page.done(rows, key=lambda r: (int(not r["builtin"]), r["name"]))
    data = [StreamPublic(**stream_def(r).to_dict()) for r in rows]
    return StreamsPublic(data=data, count=len(data), next_cursor=nxt)


@router.get("/{name}", response_model=StreamPublic)
async def get_stream(name: Annotated[str, Path(pattern=STREAM_PATTERN)], pool: PoolDep, user: CurrentUser):
    async with pool.acquire() as con:
        row = await con.fetchrow(f"SELECT {STREAM_COLUMNS} FROM streams WHERE name = $1", name)
    if row is None:
        raise NotFound(f"stream {name!r} not found")
    return StreamPublic(**stream_def(row).to_dict())


@router.post("", response_model=StreamPublic, status_code=201, responses={409: {"description": "stream exists"}})
async def add_stream(pool: PoolDep, user: CurrentUser, body: dict[str, Any] = Body(...)):
    """Create a scalar stream: ``{"name", "title", "metrics": {m: {unit, min, max}}, "device_types",
    "default_rules": [rule...], "dashboard": {"title", "panels": [{"metric"}]}}`` (admin)."""
    user.require("admin")
    try:
        sdef = StreamDef.from_dict(body)
    except StreamError as exc:
        raise BadQuery(f"invalid stream: {exc}") from None
    async with pool.acquire() as con:
        try:
            async with con.transaction():
                rule_ids = await create_stream(con, sdef, actor=user.name, source="api", key_id=user.key_id)
        except asyncpg.UniqueViolationError:
            raise Conflict(f"stream {sdef.name!r} exists") from None
    return StreamPublic(**sdef.to_dict(), rule_ids=rule_ids)


@router.put("/{name}", response_model=StreamPublic, responses={409: {"description": "built-in stream"}})
async def put_stream(name: Annotated[str, Path(pattern=STREAM_PATTERN)], pool: PoolDep, user: CurrentUser,
                     body: dict[str, Any] = Body(...)):
    """Replace a stream's definition (admin). Rules created from its default rules stay as they are
    (change them through /v1/rules); default rules new by name are created (``rule_ids``)."""
    user.require("admin")
    if body.get("name", name) != name:
        raise BadQuery("the body's name must be the path's (a stream cannot be renamed)")
    try:
        sdef = StreamDef.from_dict({**body, "name": name})
    except StreamError as exc:
        raise BadQuery(f"invalid stream: {exc}") from None
    async with pool.acquire() as con:
        try:
            async with con.transaction():
                rule_ids = await replace_stream(con, sdef, actor=user.name, source="api", key_id=user.key_id)
        except StreamInUse as exc:
            raise Conflict(str(exc)) from None
    if rule_ids is None:
        raise NotFound(f"stream {name!r} not found")
    return StreamPublic(**sdef.to_dict(), rule_ids=rule_ids)


@router.delete("/{name}", status_code=204,
               responses={409: {"description": "built-in stream, or devices still registered on it"}})
async def remove_stream(name: Annotated[str, Path(pattern=STREAM_PATTERN)], pool: PoolDep, user: CurrentUser):
    """Delete a stream that has no devices (admin); the rules scoped to it are disabled, not deleted."""
    user.require("admin")
    async with pool.acquire() as con:
        try:
            async with con.transaction():
                disabled = await delete_stream(con, name, actor=user.name, source="api", key_id=user.key_id)
        except StreamInUse as exc:
            raise Conflict(str(exc)) from None
    if disabled is None:
        raise NotFound(f"stream {name!r} not found")
    return Response(status_code=204)


async def check_stream(pool: asyncpg.Pool, name: str | None) -> None:
    """422 for a stream filter naming no registered stream (the registry is data: looked up, not an enum)."""
    if name is not None:
        async with pool.acquire() as con:
            if await con.fetchval("SELECT 1 FROM streams WHERE name = $1", name) is None:
                raise BadQuery(f"unknown stream {name!r}")
