"""Replay dead letters once their cause is fixed (e.g. an unknown device registered since): each selected
message goes through the same decode, registry resolution and write as live ingest
(:class:`~wulian.ingest.pipeline.Ingestor`), without auto-registration (registering the device is the
fix being waited for, not something a replay should guess). The dead letter keeps its row and records
the outcome (``replayed_at``, ``replay_result``: ``ok`` or the reason it was refused again); a refusal
adds no new dead letter. Replaying a message already written is harmless (the unique indexes make
writes idempotent). Alarm rules are not evaluated for replayed readings (they are late by definition;
the derive jobs pick them up on their next pass)."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import asyncpg

from wulian.ingest import audit
from wulian.ingest.batch_writer import BatchWriter, init_connection
from wulian.ingest.mqtt_client import InMessage
from wulian.ingest.pipeline import IngestConfig, Ingestor, build_rows

MAX_REPLAY = 500  # dead letters per request


@dataclass(frozen=True, slots=True)
class Outcome:
    id: int
    result: str  # ok | not_found | no_payload | the reason it was refused again
    records: int = 0


class _OneConnection:
    """The writer's ``pool`` for a replay: one connection, with the ingest staging tables it needs (the
    API's pool has none: ingest creates them in its own pool's ``init``)."""

    def __init__(self, con: asyncpg.Connection) -> None:
        self.con = con

    @contextlib.asynccontextmanager
    async def acquire(self):
        yield self.con


class _NoConsumer:
    """Replay acknowledges nothing: the messages come from the database, not the broker."""

    backlog = 0

    def ack_many(self, messages) -> int:
        return len(messages)


async def replay(pool: asyncpg.Pool, ids: list[int], *, actor: str, source: str = "api", key_id: str | None = None,
                 topic_prefix: str = "wl", regions: list[str] | None = None) -> list[Outcome]:
    """Replay the dead letters ``ids`` (those of devices outside ``regions`` count as not found)."""
    ids = list(dict.fromkeys(ids))[:MAX_REPLAY]
    async with pool.acquire() as con:
        await init_connection(con)
        writer = BatchWriter(_OneConnection(con), auto_register=False, auto_add_metrics=True)
        ingestor = Ingestor(_NoConsumer(), writer, IngestConfig(topic_prefix=topic_prefix))
        return await _replay(con, writer, ingestor, ids, actor=actor, source=source, key_id=key_id, regions=regions)


async def _replay(con: asyncpg.Connection, writer: BatchWriter, ingestor: Ingestor, ids: list[int], *, actor: str,
                  source: str, key_id: str | None, regions: list[str] | None) -> list[Outcome]:
    rows = {r["id"]: r for r in await con.fetch(
        "SELECT x.id, x.topic, x.payload, x.device_id, x.reason, x.replay_result FROM dead_letters x"
        " LEFT JOIN devices d ON d.device_id = x.device_id"
        " WHERE x.id = ANY($1::bigint[]) AND ($2::text[] IS NULL OR d.region = ANY($2))", ids, regions)}
    out: list[Outcome] = []
    for i in ids:
        row = rows.get(i)
        if row is None:
            out.append(Outcome(i, "not_found"))
            continue
        if row["payload"] is None:
            out.append(Outcome(i, "no_payload"))
            continue
        batch = ingestor.decode_batch([InMessage(0, i, 1, row["topic"], bytes(row["payload"]))])
        items, devices, metric_ids = await ingestor._resolve(batch) if batch.items else ([], {}, {})
        if batch.dead:
            out.append(Outcome(i, batch.dead[0].reason))
            continue
        try:
            res = await writer.write(build_rows(items, devices, metric_ids))
        except asyncpg.PostgresError as exc:
            out.append(Outcome(i, f"db_rejected: {str(exc)[:200]}"))
            continue
        out.append(Outcome(i, "ok", res.inserted))
    async with con.transaction():
        await con.executemany("UPDATE dead_letters SET replayed_at = now(), replay_result = $2 WHERE id = $1",
                              [(o.id, o.result) for o in out if o.id in rows])
        await audit.record(
            con, actor=actor, key_id=key_id, source=source, action="dead_letter.replay",
            object_type="dead_letter", object_id=",".join(str(o.id) for o in out)[:1000],
            before=[{"id": o.id, "reason": rows[o.id]["reason"], "replay_result": rows[o.id]["replay_result"]}
                    for o in out if o.id in rows],
            after=[{"id": o.id, "result": o.result, "records": o.records} for o in out])
    return out
