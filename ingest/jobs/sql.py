"""SQL pieces the derived-data jobs share: exact µs times, and which episode rows already exist."""
from __future__ import annotations

import asyncpg
import numpy as np

# A µs int8 as timestamptz, exactly (no float rounding): used wherever arrays of times go to SQL.
TS_US = "(timestamptz 'epoch' + ({}) * interval '1 microsecond')"
US_OF = "(extract(epoch FROM {}) * 1000000)::int8"


def us(ns) -> list[int]:
    """ns -> µs ints (exact for times read from the database, which keeps µs)."""
    return (np.asarray(ns, np.int64) // 1000).tolist()


async def existing_open(con: asyncpg.Connection, table: str, key_cols: tuple[str, ...], key_types: tuple[str, ...],
                        keys: list[tuple]) -> dict[tuple, bool]:
    """``{key: open}`` for the rows of ``table`` among ``keys``; the last key column is a µs start time."""
    if not keys:
        return {}
    cols = list(zip(*keys))
    unnest = ", ".join(f"${i + 1}::{t}[]" for i, t in enumerate(key_types))
    names = ", ".join(key_cols)
    k_sel = ", ".join(f"t.{c}" for c in key_cols[:-1])
    start = key_cols[-1]
    rows = await con.fetch(
        f"SELECT {k_sel}, {US_OF.format('t.' + start)} AS s_us, t.open FROM {table} t"
        f" JOIN unnest({unnest}) AS k({names}) ON "
        + " AND ".join(f"t.{c} = k.{c}" for c in key_cols[:-1])
        + f" AND t.{start} = {TS_US.format('k.' + start)}",
        *[list(c) for c in cols])
    return {tuple(r[:-1]): r["open"] for r in rows}
