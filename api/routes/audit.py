"""The audit log (admin): every write through the API or the CLI, with who, when and before/after."""
from __future__ import annotations

from datetime import datetime
from typing import Annotated

import orjson
from fastapi import APIRouter, Depends, Query

from wulian.api.auth import CurrentUser
from wulian.api.deps import PoolDep
from wulian.api.errors import BadQuery
from wulian.api.paging import Page, paging
from wulian.api.schemas import AuditEntryPublic, AuditPublic

router = APIRouter(prefix="/v1/audit", tags=["audit"])
AUDIT_COLUMNS = ("id, time, actor, key_id, source, action, object_type, object_id, region, before::text AS before,"
                 " after::text AS after")


def audit_entry(row) -> AuditEntryPublic:
    d = dict(row)
    for k in ("before", "after"):
        d[k] = orjson.loads(d[k]) if d[k] is not None else None
    return AuditEntryPublic(**d)


@router.get("", response_model=AuditPublic)
async def audit_log(
    pool: PoolDep,
    user: CurrentUser,
    actor: str | None = None,
    action: Annotated[str | None, Query(description="e.g. rule.update, key.revoke, alert.ack, device.provision, "
                                                    "channel.update, route.delete, notification.retry")] = None,
    object_type: Annotated[str | None, Query(description="rule, api_key, device, alert, dead_letter, notify_channel, "
                                                         "notify_route, notification, forward_upstream, "
                                                         "forward_station")] = None,
    object_id: str | None = None,
    from_: Annotated[datetime | None, Query(alias="from", description="at or after (ISO 8601)")] = None,
    to: Annotated[datetime | None, Query(description="before (ISO 8601)")] = None,
    page: Annotated[Page, Depends(paging(keyset=1))] = Page(100),
):
    """Newest first (admin only)."""
    user.require("admin")
    if from_ is not None and to is not None and to <= from_:
        raise BadQuery("'to' must be after 'from'")
    async with pool.acquire() as con:
        rows = await con.fetch(
            f"SELECT {AUDIT_COLUMNS} FROM audit_log WHERE ($1::text IS NULL OR actor = $1)"
            " AND ($2::text IS NULL OR action = $2) AND ($3::text IS NULL OR object_type = $3)"
            " AND ($4::text IS NULL OR object_id = $4) AND ($5::timestamptz IS NULL OR time >= $5)"
            " AND ($6::timestamptz IS NULL OR time < $6) AND ($7::bigint IS NULL OR id < $7)"
            " ORDER BY id DESC LIMIT $8",
            actor, action, object_type, object_id, from_, to, page.after and page.after[0], page.fetch)
    rows, nxt = page.done(rows, key=lambda r: (r["id"],))
    return AuditPublic(data=[audit_entry(r) for r in rows], count=len(rows), next_cursor=nxt)
