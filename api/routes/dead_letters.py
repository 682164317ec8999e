"""Dead letters (operator): what ingest refused and why, and their replay once the cause is fixed.

A key limited to regions sees the dead letters of registered devices in them; messages from devices
the registry does not know (``unknown_device``, malformed topics) have no region and are visible to
all-region keys only."""
from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Query

from wulian.api.auth import CurrentUser
from wulian.api.deps import PoolDep, SettingsDep
from wulian.api.errors import BadQuery
from wulian.api.paging import Page, paging
from wulian.api.schemas import DeadLetterPublic, DeadLettersPublic, ReplayOutcome, ReplayPublic, ReplayRequest
from wulian.core.const import DEVICE_ID_PATTERN
from wulian.ingest.replay import replay

router = APIRouter(prefix="/v1/dead-letters", tags=["dead letters"])
PREVIEW_BYTES = 200


@router.get("", response_model=DeadLettersPublic)
async def list_dead_letters(
    pool: PoolDep,
    user: CurrentUser,
    reason: Annotated[str | None, Query(description="e.g. unknown_device, bad_json, crc_mismatch")] = None,
    device: Annotated[str | None, Query(pattern=DEVICE_ID_PATTERN)] = None,
    replayed: Annotated[bool | None, Query(description="true: replayed at least once; false: never")] = None,
    from_: Annotated[datetime | None, Query(alias="from", description="at or after (ISO 8601)")] = None,
    to: Annotated[datetime | None, Query(description="before (ISO 8601)")] = None,
    page: Annotated[Page, Depends(paging(maximum=1000, keyset=1))] = Page(100),
):
    """Newest first, with a text preview of the payload (operator)."""
    user.require("operator")
    if from_ is not None and to is not None and to <= from_:
        raise BadQuery("'to' must be after 'from'")
    async with pool.acquire() as con:
        rows = await con.fetch(
            "SELECT x.id, x.time, x.topic, x.device_id, x.kind, x.reason, x.detail,"
            " coalesce(octet_length(x.payload), 0) AS payload_size, substring(x.payload FROM 1 FOR $9) AS head,"
            " x.replayed_at, x.replay_result FROM dead_letters x LEFT JOIN devices d ON d.device_id = x.device_id"
            " WHERE ($1::text[] IS NULL OR d.region = ANY($1)) AND ($2::text IS NULL OR x.reason = $2)"
            " AND ($3::text IS NULL OR x.device_id = $3) AND ($4::timestamptz IS NULL OR x.time >= $4)"
            " AND ($5::timestamptz IS NULL OR x.time < $5) AND ($6::bool IS NULL OR (x.replayed_at IS NOT NULL) = $6)"
            " AND ($7::bigint IS NULL OR x.id < $7) ORDER BY x.id DESC LIMIT $8",
            user.region_filter(), reason, device, from_, to, replayed, page.after and page.after[0], page.fetch,
            PREVIEW_BYTES)
    rows, nxt = page.done(rows, key=lambda r: (r["id"],))
    data = []
    for r in rows:
        d = {k: r[k] for k in r.keys() if k != "head"}
        d["payload_preview"] = bytes(r["head"]).decode("utf-8", "replace").replace("\x00", "") if r["head"] else None
        data.append(DeadLetterPublic(**d))
    return DeadLettersPublic(data=data, count=len(data), next_cursor=nxt)


@router.post("/replay", response_model=ReplayPublic)
async def replay_dead_letters(body: ReplayRequest, pool: PoolDep, settings: SettingsDep, user: CurrentUser):
    """Run the selected dead letters through decode and write again (operator), e.g. after registering the
    device they came from. Each keeps its row and records the outcome; the replay is audited."""
    user.require("operator")
    out = await replay(pool, body.ids, actor=user.name, key_id=user.key_id, source="api",
                       topic_prefix=settings.mqtt.topic_prefix, regions=user.region_filter())
    ok = sum(o.result == "ok" for o in out)
    return ReplayPublic(replayed=len(out), ok=ok, failed=len(out) - ok,
                        results=[ReplayOutcome(id=o.id, result=o.result, records=o.records) for o in out])
