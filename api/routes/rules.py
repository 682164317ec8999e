"""Alarm rules as data: anyone may read them, admins write them. Ingest picks up changes on its own."""
from __future__ import annotations

from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Body, Depends, Response

from wulian.api.auth import CurrentUser
from wulian.api.deps import PoolDep
from wulian.api.errors import BadQuery, NotFound
from wulian.api.paging import Page, paging
from wulian.api.routes.audit import AUDIT_COLUMNS, audit_entry
from wulian.api.schemas import AuditPublic, RulePublic, RulesPublic
from wulian.ingest import audit
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


def _audit_view(row) -> dict | None:
    return None if row is None else {**_public(row).model_dump(mode="json")}


async def _audit(con, user, action: str, rule_id: int, before, after) -> None:
    await audit.record(con, actor=user.name, key_id=user.key_id, source="api", action=action, object_type="rule",
                       object_id=rule_id, before=_audit_view(before), after=_audit_view(after))


@router.get("", response_model=RulesPublic)
async def list_rules(pool: PoolDep, user: CurrentUser,
                     page: Annotated[Page, Depends(paging(default=500, maximum=5000, keyset=1))] = Page(500)):
    """Rules by id."""
    async with pool.acquire() as con:
        rows = await con.fetch(f"SELECT {_COLS} FROM rules WHERE ($1::bigint IS NULL OR id > $1) ORDER BY id"
                               " LIMIT $2", page.after and page.after[0], page.fetch)
    rows, nxt = page.done(rows, key=lambda r: (r["id"],))
    return RulesPublic(data=[_public(r) for r in rows], count=len(rows), next_cursor=nxt)


@router.get("/{rule_id}/history", response_model=AuditPublic)
async def rule_history(rule_id: int, pool: PoolDep, user: CurrentUser,
                       page: Annotated[Page, Depends(paging(keyset=1))] = Page(100)):
    """Every change of one rule (the audit log's entries for it), newest first, with before/after."""
    async with pool.acquire() as con:
        if await con.fetchval("SELECT 1 FROM rules WHERE id = $1", rule_id) is None:
            raise NotFound(f"rule {rule_id} not found")
        rows = await con.fetch(
            f"SELECT {AUDIT_COLUMNS} FROM audit_log WHERE object_type = 'rule' AND object_id = $1"
            " AND ($2::bigint IS NULL OR id < $2) ORDER BY id DESC LIMIT $3",
            str(rule_id), page.after and page.after[0], page.fetch)
    rows, nxt = page.done(rows, key=lambda r: (r["id"],))
    return AuditPublic(data=[audit_entry(r) for r in rows], count=len(rows), next_cursor=nxt)


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
            await _audit(con, user, "rule.create", rule_id, None, row)
    return _public(row)


@router.put("/{rule_id}", response_model=RulePublic)
async def replace_rule(rule_id: int, pool: PoolDep, user: CurrentUser, body: dict[str, Any] = Body(...)):
    user.require("admin")
    rule = _validated(rule_id, body)
    async with pool.acquire() as con:
        async with con.transaction():
            before = await con.fetchrow(f"SELECT {_COLS} FROM rules WHERE id = $1 FOR UPDATE", rule_id)
            if before is None:
                raise NotFound(f"rule {rule_id} not found")
            row = await con.fetchrow(
                f"UPDATE rules SET definition = $2::jsonb, enabled = $3, updated_at = now(), updated_by = $4"
                f" WHERE id = $1 RETURNING {_COLS}", rule_id, orjson.dumps(rule.to_dict()).decode(), rule.enabled,
                user.name)
            await _audit(con, user, "rule.update", rule_id, before, row)
    return _public(row)


@router.delete("/{rule_id}", status_code=204)
async def delete_rule(rule_id: int, pool: PoolDep, user: CurrentUser):
    user.require("admin")
    async with pool.acquire() as con:
        async with con.transaction():
            before = await con.fetchrow(f"SELECT {_COLS} FROM rules WHERE id = $1 FOR UPDATE", rule_id)
            if before is None:
                raise NotFound(f"rule {rule_id} not found")
            row = await con.fetchrow("UPDATE rules SET enabled = false, updated_at = now(), updated_by = $2,"
                                     " definition = jsonb_set(definition, '{enabled}', 'false') WHERE id = $1"
                                     f" RETURNING {_COLS}", rule_id, user.name)
            await _audit(con, user, "rule.disable", rule_id, before, row)
    return Response(status_code=204)
