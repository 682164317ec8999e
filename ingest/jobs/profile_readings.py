"""Readings of registry-stream devices as numpy columns, for the profiles' derive jobs."""
from __future__ import annotations

import asyncpg
import numpy as np

from wulian.core.const import INVALID_FLAGS
from wulian.ingest.jobs.binary_copy import fetch_columns
from wulian.ingest.jobs.sql import TS_US, US_OF


async def stream_readings(con: asyncpg.Connection, stream: str, metrics: list[str], from_ns: int, to_ns: int
                          ) -> dict[str, dict[int, tuple[np.ndarray, np.ndarray]]]:
    """``{metric: {device: (t_ns ascending, values)}}`` of a stream's valid readings in ``[from_ns, to_ns)``
    (readings flagged invalid - HJ 212 maintenance, fault ... - are left out)."""
    ids = {r["name"]: r["id"] for r in await con.fetch(
        "SELECT id, name FROM metrics WHERE name = ANY($1::text[])", metrics)}
    out: dict[str, dict[int, tuple[np.ndarray, np.ndarray]]] = {m: {} for m in metrics}
    if not ids:
        return out
    cols = await fetch_columns(con, f"""
        SELECT r.device, r.metric::int4, {US_OF.format('r.time')}, r.value
        FROM readings r JOIN devices d ON d.id = r.device
        WHERE d.stream = $1 AND r.metric = ANY($2::int2[]) AND r.flag <> ALL($3::text[])
          AND r.time >= {TS_US.format('$4::int8')} AND r.time < {TS_US.format('$5::int8')}
        ORDER BY r.device, r.metric, r.time""",
        (stream, list(ids.values()), sorted(INVALID_FLAGS), from_ns // 1000, to_ns // 1000),
        [("device", "i4"), ("metric", "i4"), ("t", "i8"), ("value", "f8")])
    name_of = {i: n for n, i in ids.items()}
    dev, met = cols["device"], cols["metric"]
    if dev.shape[0] == 0:
        return out
    cut = np.nonzero((dev[1:] != dev[:-1]) | (met[1:] != met[:-1]))[0] + 1
    for a, b in zip(np.concatenate([[0], cut]), np.concatenate([cut, [dev.shape[0]]])):
        out[name_of[int(met[a])]][int(dev[a])] = (cols["t"][a:b] * 1000, cols["value"][a:b])
    return out
