"""Alarm rules as data: anyone may read them, admins write them. Ingest picks up changes on its own."""
from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter, Body, Response

from wulian.api.auth import CurrentUser
from wulian.api.deps import PoolDep
from wulian.api.errors import BadQuery, NotFound
from wulian.api.schemas import RulePublic, RulesPublic
from wulian.core.alarms.rules import Rule, RuleError

router = APIRouter(prefix="/v1/rules", tags=["rules"])
_COLS = "id, enabled, definition::text AS definition, updated_at, updated_by"


def _public(row) -> RulePublic:
    d = dict(row)
    d["definition"] = orjson.loads(d["definition"])
    return RulePublic(**d)


def _validated(rule_id: int, body: dict[str, Any]) -> Rule:
    try:
        return Rule.from_dict({**body, "id": rule_id})
    except (RuleError, TypeError, ValueError) as exc:
        raise BadQuery(f"invalid rule: {exc}") from None


@router.get("", response_model=RulesPublic)
async def list_rules(pool: PoolDep, user: CurrentUser):
    async with pool.acquire() as con:
        rows = await con.fetch(f"SELECT {_COLS} FROM rules ORDER BY id")
    return RulesPublic(data=[_public(r) for r in rows], count=len(rows))


@router.get("/{rule_id}", response_model=RulePublic)
async def get_rule(rule_id: int, pool: PoolDep, user: CurrentUser):
    async with pool.acquire() as con:
        row = await con.fetchrow(f"SELECT {_COLS} FROM rules WHERE id = $1", rule_id)
    if row is None:
        raise NotFound(f"rule {rule_id} not found")
    return _public(row)


@router.post("", response_model=RulePublic, status_code=201)
async def create_rule(pool: PoolDep, user: CurrentUser, body: dict[str, Any] = Body(...)):
    user.require("admin")
    _validated(0, body)  # fail before taking an id
    async with pool.acquire() as con:
        async with con.transaction():
            rule_id = await con.fetchval("SELECT nextval(pg_get_serial_sequence('rules', 'id'))")
            rule = _validated(rule_id, body)
            row = await con.fetchrow(
                f"INSERT INTO rules (id, definition, enabled, updated_by) VALUES ($1, $2::jsonb, $3, $4)"
                f" RETURNING {_COLS}", rule_id, orjson.dumps(rule.to_dict()).decode(), rule.enabled, user.name)
    return _public(row)


@router.put("/{rule_id}", response_model=RulePublic)
async def replace_rule(rule_id: int, pool: PoolDep, user: CurrentUser, body: dict[str, Any] = Body(...)):
    user.require("admin")
    rule = _validated(rule_id, body)
    async with pool.acquire() as con:
        row = await con.fetchrow(
            f"UPDATE rules SET definition = $2::jsonb, enabled = $3, updated_at = now(), updated_by = $4"
            f" WHERE id = $1 RETURNING {_COLS}", rule_id, orjson.dumps(rule.to_dict()).decode(), rule.enabled,
            user.name)
    if row is None:
        raise NotFound(f"rule {rule_id} not found")
    return _public(row)


@router.delete("/{rule_id}", status_code=204)
async def delete_rule(rule_id: int, pool: PoolDep, user: CurrentUser):
    user.require("admin")
    async with pool.acquire() as con:
        status = await con.execute("UPDATE rules SET enabled = false, updated_at = now(), updated_by = $2,"
                                   " definition = jsonb_set(definition, '{enabled}', 'false') WHERE id = $1",
                                   rule_id, user.name)
    if status.endswith(" 0"):
        raise NotFound(f"rule {rule_id} not found")
    return Response(status_code=204)
