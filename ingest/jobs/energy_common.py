"""Shared plumbing of the energy and transport jobs: system rules, bulk column fetches, episode upserts
whose alerts follow the episode's lifecycle, and China-day helpers.

An *episode* (a violation, an outage, a leak run) has a key, a start, an end and ``open`` (the condition
still held at the end of the data seen). Jobs re-derive recent episodes on every run; the upsert tells
which are new and which changed state, and only those touch alerts, so a second run over the same data
raises nothing twice:

* new episode: raise at its start; if already over, clear at its end (the alert keeps the history);
* known and was open, now over: clear;  known and open: count the update;  known, was over, open again: raise.

Episodes that start before the job's watermark only update rows found earlier, never insert: their
start may be an artefact of where the run's look-back window began.
"""
from __future__ import annotations

import io
from dataclasses import dataclass

import asyncpg
import numpy as np

from wulian.core.const import SYSTEM_RULE_BASE
from wulian.core.numbers import finite_or_none as finite
from wulian.ingest.alert_store import AlertTarget, clear_alert, raise_alert, update_alert

# A µs int8 as timestamptz, exactly (no float rounding): used wherever arrays of times go to SQL.
TS_US = "(timestamptz 'epoch' + ({}) * interval '1 microsecond')"
US_OF = "(extract(epoch FROM {}) * 1000000)::int8"


@dataclass(frozen=True, slots=True)
class SystemRule:
    """A built-in rule: alert rule id ``SYSTEM_RULE_BASE + n``, a stable name, severity and title."""

    n: int
    name: str
    severity: str
    title: str
    auto_clear: bool = True  # False: the alert stays open until a person closes it

    @property
    def id(self) -> int:
        return SYSTEM_RULE_BASE + self.n


@dataclass(frozen=True, slots=True)
class DeviceRef:
    id: int
    device_id: str
    region: str
    stream: str

    def target(self, rule: SystemRule, metric: str = "", title: str | None = None,
               severity: str | None = None) -> AlertTarget:
        return AlertTarget(rule.id, self.id, self.device_id, self.region, self.stream, metric,
                           severity or rule.severity, title or rule.title)


@dataclass(slots=True)
class AlertCounts:
    raised: int = 0
    cleared: int = 0
    updated: int = 0

    def as_dict(self) -> dict:
        return {"raised": self.raised, "cleared": self.cleared, "alert_updates": self.updated}


_PG_TYPES = {"i4": ">i4", "i8": ">i8", "f8": ">f8", "bool": "?"}
_COPY_HEADER = 19  # PGCOPY\n\377\r\n\0 + flags + extension length


async def fetch_columns(con: asyncpg.Connection, query: str, args: tuple, cols: list[tuple[str, str]]
                        ) -> dict[str, np.ndarray]:
    """Run ``query`` through binary COPY and return its columns as numpy arrays.

    Every column must be fixed-width and NOT NULL (coalesce in SQL; NaN for missing doubles), typed as
    listed in ``cols`` (name, 'i4' | 'i8' | 'f8' | 'bool'), so each row has the same size and the whole
    result parses as one structured array: no Python object per value.
    """
    buf = io.BytesIO()
    await con.copy_from_query(query, *args, output=buf, format="binary")
    raw = buf.getvalue()
    fields = [("n", ">i2")]
    for name, t in cols:
        fields += [(f"_{name}_len", ">i4"), (name, _PG_TYPES[t])]
    dt = np.dtype(fields)
    body = raw[_COPY_HEADER:-2]  # trailer: int16 -1
    n = len(body) // dt.itemsize
    if n * dt.itemsize != len(body):
        raise ValueError("binary COPY rows are not fixed width: a column is NULL or not the declared type")
    rows = np.frombuffer(body, dtype=dt, count=n)
    bad = rows["n"] != len(cols)
    for name, t in cols:
        bad |= rows[f"_{name}_len"] != np.dtype(_PG_TYPES[t]).itemsize
    if bad.any():  # rows shifted by a NULL somewhere that happened to keep the total length
        raise ValueError("binary COPY rows are not fixed width: a column is NULL or not the declared type")
    out = {}
    for name, t in cols:
        native = np.dtype(bool) if t == "bool" else np.dtype(_PG_TYPES[t]).newbyteorder("=")
        out[name] = rows[name].astype(native)
    return out


def us(ns) -> list[int]:
    """ns -> µs ints (exact for times read from the database, which keeps µs)."""
    return (np.asarray(ns, np.int64) // 1000).tolist()


async def sync_alert(con: asyncpg.Connection, target: AlertTarget, rule: SystemRule, *, inserted: bool,
                     was_open: bool | None, open_: bool, start_ns: int, end_ns: int, value: float | None,
                     counts: AlertCounts) -> None:
    """Move the alert of one episode along (see the module docstring)."""
    v = finite(value)
    if inserted or (open_ and not was_open):
        if await raise_alert(con, target, start_ns, v) is not None:
            counts.raised += 1
        if not open_ and rule.auto_clear:
            if await clear_alert(con, target, end_ns, v) is not None:
                counts.cleared += 1
    elif was_open and not open_:
        if rule.auto_clear and await clear_alert(con, target, end_ns, v) is not None:
            counts.cleared += 1
    elif open_:
        await update_alert(con, target, end_ns, v)
        counts.updated += 1


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
