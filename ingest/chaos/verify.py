"""What the database holds for the chaos sources, compared with what the broker acknowledged.

- ``lost``: acknowledged sequence numbers with no stored ``seq`` reading;
- ``duplicates``: stored ``seq`` readings beyond one per sequence number (a redelivery that was stored
  again under another key would show here; the unique index makes an exact redelivery a no-op);
- ``partial``: stored messages missing some of their values (a message is stored whole or not at all);
- alerts: the stored alerts of the sawtooth rule against the reference transitions of the stored series:
  every expected raise has an alert raised at that reading's time with a ``raised`` event, every expected
  clear a ``cleared`` event at its time, no unexpected alert, never two open alerts for one series.
"""
from __future__ import annotations

from collections import defaultdict

import asyncpg
import numpy as np

from wulian.ingest.chaos.sources import expected_transitions

_SEQ_ROWS = """
SELECT d.device_id, r.value FROM readings r JOIN devices d ON d.id = r.device JOIN metrics m ON m.id = r.metric
WHERE m.name = 'seq' AND d.device_id = ANY($1::text[])"""
_ALL_ROWS = """
SELECT d.device_id, count(*) AS n FROM readings r JOIN devices d ON d.id = r.device
WHERE d.device_id = ANY($1::text[]) GROUP BY d.device_id"""
_ALERTS = """
SELECT a.id, a.device_id, a.state, (extract(epoch FROM a.raised_at) * 1000)::bigint AS raised_ms,
       (extract(epoch FROM a.cleared_at) * 1000)::bigint AS cleared_ms,
       count(*) FILTER (WHERE e.event = 'raised') AS n_raised,
       count(*) FILTER (WHERE e.event = 'cleared') AS n_cleared
FROM alerts a LEFT JOIN alert_events e ON e.alert_id = a.id
WHERE a.rule_id = $1 AND a.device_id = ANY($2::text[]) GROUP BY a.id"""


async def stored_count(con: asyncpg.Connection, devices: list[str]) -> int:
    return await con.fetchval(_SEQ_ROWS.replace("d.device_id, r.value", "count(*)"), devices)


async def stored_seqs(con: asyncpg.Connection, devices: list[str]) -> dict[str, np.ndarray]:
    out: dict[str, list[int]] = defaultdict(list)
    for r in await con.fetch(_SEQ_ROWS, devices):
        out[r["device_id"]].append(int(r["value"]))
    return {d: np.sort(np.asarray(out.get(d, []), np.int64)) for d in devices}


def count_loss(acked: dict[str, np.ndarray], stored: dict[str, np.ndarray]) -> dict[str, int]:
    published = lost = dups = stored_n = unacked_stored = 0
    for dev, a in acked.items():
        s = stored.get(dev, np.empty(0, np.int64))
        uniq = np.unique(s)
        published += len(a)
        stored_n += len(uniq)
        dups += len(s) - len(uniq)
        lost += len(np.setdiff1d(a, uniq, assume_unique=True))
        unacked_stored += len(np.setdiff1d(uniq, a, assume_unique=True))
    return {"published": published, "stored": stored_n, "lost": lost, "duplicates": dups,
            "stored_not_acked": unacked_stored}


async def check_partial(con: asyncpg.Connection, stored: dict[str, np.ndarray], values_per_msg: int) -> int:
    """Messages of which only some values were stored (rows per device against stored messages)."""
    rows = {r["device_id"]: r["n"] for r in await con.fetch(_ALL_ROWS, list(stored))}
    return sum(abs(len(np.unique(s)) * values_per_msg - rows.get(d, 0)) for d, s in stored.items()) // max(1, values_per_msg)


async def check_alerts(con: asyncpg.Connection, rule_id: int, stored: dict[str, np.ndarray], base_ms: int,
                       step_ms: int, pending_steps: int = 0) -> dict[str, int]:
    by_dev: dict[str, list] = defaultdict(list)
    for r in await con.fetch(_ALERTS, rule_id, list(stored)):
        by_dev[r["device_id"]].append(r)
    out = dict(expected_raises=0, expected_clears=0, alerts=0, missing_raises=0, unexpected_alerts=0,
               missing_clears=0, missing_events=0, duplicate_open=0)
    for dev, seqs in stored.items():
        raises, clears = expected_transitions(np.unique(seqs), pending_steps)
        want_raise = set((base_ms + raises * step_ms).tolist())
        want_clear = set((base_ms + clears * step_ms).tolist())
        alerts = by_dev.get(dev, [])
        got_raise = {a["raised_ms"] for a in alerts}
        got_clear = {a["cleared_ms"] for a in alerts if a["cleared_ms"] is not None}
        out["expected_raises"] += len(want_raise)
        out["expected_clears"] += len(want_clear)
        out["alerts"] += len(alerts)
        out["missing_raises"] += len(want_raise - got_raise)
        out["unexpected_alerts"] += len(got_raise - want_raise) + (len(alerts) - len(got_raise))
        out["missing_clears"] += len(want_clear - got_clear)
        out["missing_events"] += sum((a["n_raised"] != 1) + (a["cleared_ms"] is not None and a["n_cleared"] != 1)
                                     for a in alerts)
        out["duplicate_open"] += max(0, sum(a["state"] in ("active", "acknowledged") for a in alerts) - 1)
    return out


def alerts_consistent(a: dict[str, int]) -> bool:
    return not any(a[k] for k in ("missing_raises", "unexpected_alerts", "missing_clears", "missing_events",
                                  "duplicate_open"))


def add_alert_counts(a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
    return {k: a.get(k, 0) + b.get(k, 0) for k in set(a) | set(b)}


def alert_summary(a: dict[str, int]) -> dict[str, int]:
    """The issue's three alert figures: expected raises, raised more than once, missed."""
    return {"alerts_expected": a["expected_raises"],
            "alerts_raised_twice": a["unexpected_alerts"] + a["duplicate_open"]
            + a["missing_events"],  # an alert with two `raised` events was told twice
            "alerts_missed": a["missing_raises"]}
