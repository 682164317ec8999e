"""The alarm engine inside ingest: evaluate each batch before its commit, write the alert transitions
in the same transaction as the data, publish them to MQTT after the commit.

- Series are (stream, device, metric). Scalar readings are series as they come; a vehicle position
  feeds ``speed_kmh``, ``alarm_bits`` and ``status_bits`` (bit rules), a traffic observation
  ``speed_kmh``, ``flow_vph`` and ``occupancy``.
- Alert rows follow ``core.alarms.lifecycle``; the partial unique index on open alerts makes a RAISE
  for an alert that is already open an update, so a restart from an older engine snapshot never
  duplicates an alert, and a CLEAR for an alert that is no longer open is a no-op.
- Engine state (pending periods, hysteresis) is saved every ``save_interval_s`` and on shutdown. Between
  snapshots a *pending journal* (``alarm_pending_journal``) keeps what a kill -9 would otherwise lose:
  acknowledged messages are never redelivered, so a pending period that began after the snapshot would
  restart from the snapshot's view and its raise come late or never (``wulian chaos --pending-rule``).
  Each batch's transaction upserts the bindings of that batch whose pending or keep-firing period,
  open/closed state or flatline run start changed (``AlarmEngine.changed_since``), with a batch number
  ``seq`` (a later batch's row wins whatever order overlapping batch transactions commit in). A restart
  applies the rows newer than the snapshot on top of it, then ``_reconcile`` takes open/closed from the
  alerts table; saving a snapshot deletes the rows it covers. Chosen over (a) replaying ``readings``
  newer than the snapshot at start: readings are keyed by measurement time, not commit order, so which
  late or out-of-order rows the engine accepted before the crash cannot be told apart afterwards, and
  the replay would scan three hypertables at each start. Cost per batch: one gather of its bindings'
  state rows and one compare (numba, ``alarm_kernels.watch_bindings``/``changed_bindings``; measured
  ~0.6-0.8 ms per 5,000 readings x 3 rules with 3,700 pending changes per batch, a worst case, against
  1.8-2.6 ms for the engine itself, shared 2-core AMD EPYC), plus one upsert statement when something
  changed. Cluster mode skips it: its snapshot is committed with every batch.
- Missing-data rules are evaluated by a timer (``tick``), not only when data arrives.
- One lock serialises batch evaluation+write, timer ticks and snapshots, so transitions reach the
  database in the order the engine produced them.
"""
from __future__ import annotations

import asyncio
import datetime
import io
import logging
import time
from dataclasses import dataclass, field
from typing import Callable

import asyncpg
import numpy as np
import orjson

from wulian.core.alarms.compiler import SeriesKey
from wulian.core.alarms.engine import AlarmEngine, Transitions
from wulian.core.alarms.rules import Rule, RuleKind, TransitionKind
from wulian.core.arrays import ReadingArrays, SeriesDevice
from wulian.core.const import ALERTS_SEGMENT
from wulian.core.kernels.alarm_kernels import NO_TS
from wulian.ingest import metrics as m
from wulian.ingest.alert_store import AlertTarget, UpdateCoalescer, clear_alert, raise_alert

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SeriesMeta:
    device: int
    device_id: str
    region: str
    stream: str
    metric: str


@dataclass(slots=True)
class PendingAlerts:
    transitions: Transitions
    events: list[dict] = field(default_factory=list)  # filled by write(), published after commit
    journal: dict[str, np.ndarray] | None = None  # bindings whose pending state changed (AlarmEngine.changed_since)
    seq: int = 0  # the batch number of ``journal``


def _title(rule: Rule, metric: str) -> str:
    return f"{rule.name} ({metric})" if metric else rule.name


_JOURNAL_UPSERT = (
    "INSERT INTO alarm_pending_journal AS j (name, rule_id, device_id, metric, device, region, stream, seq, count,"
    " since_ns, ref_ts_ns, ref_value, seen_ts_ns)"
    " SELECT $1, * FROM unnest($2::bigint[], $3::text[], $4::text[], $5::integer[], $6::text[], $7::text[],"
    " $8::bigint[], $9::bigint[], $10::bigint[], $11::bigint[], $12::float8[], $13::bigint[])"
    " ON CONFLICT (name, rule_id, device_id, metric) DO UPDATE SET seq = EXCLUDED.seq, count = EXCLUDED.count,"
    " since_ns = EXCLUDED.since_ns, ref_ts_ns = EXCLUDED.ref_ts_ns, ref_value = EXCLUDED.ref_value,"
    " seen_ts_ns = EXCLUDED.seen_ts_ns, device = EXCLUDED.device, region = EXCLUDED.region,"
    " stream = EXCLUDED.stream WHERE j.seq < EXCLUDED.seq")


class AlarmService:
    # city mode journals pending-state changes between snapshots; a subclass whose snapshot is committed
    # with every batch (cluster mode's PartitionAlarms) turns it off
    journal_pending = True

    def __init__(self, pool: asyncpg.Pool, publish: Callable[[str, bytes], None] | None = None,
                 topic_prefix: str = "wl", save_interval_s: float = 30.0, tick_interval_s: float = 5.0,
                 rules_poll_s: float = 10.0, clock_ns: Callable[[], int] = time.time_ns,
                 state_name: str = "ingest", reconcile: bool = True) -> None:
        self.pool = pool
        # the alarm_engine_state row: 'ingest' in city mode, one per partition in cluster mode, whose
        # snapshot is committed with each batch (so it needs no reconcile against the alerts table)
        self.state_name = state_name
        self.reconcile = reconcile
        self.publish = publish
        self.prefix = topic_prefix
        self.save_interval_s = save_interval_s
        self.tick_interval_s = tick_interval_s
        self.rules_poll_s = rules_poll_s
        self.clock_ns = clock_ns
        self.lock = asyncio.Lock()
        self.engine = AlarmEngine([])
        self.meta: list[SeriesMeta] = []
        self._index: dict[tuple[str, str], int] = {}
        self._by_device: dict[str, dict[str, int]] = {}  # device_id -> metric -> series (hot-path cache)
        self._rules: dict[int, Rule] = {}
        self._rules_version: tuple | None = None
        self._tasks: list[asyncio.Task] = []
        self.raised = 0
        self.cleared = 0
        self._seq = 0  # batch number of the newest journalled change (monotonic across restarts)

    # -- setup ------------------------------------------------------------------------------------
    async def _load_rules(self, con) -> list[Rule]:
        rules = []
        for r in await con.fetch("SELECT id, definition::text AS d FROM rules WHERE enabled ORDER BY id"):
            try:
                rules.append(Rule.from_dict({**orjson.loads(r["d"]), "id": r["id"]}))
            except Exception as exc:  # a bad stored rule must not stop ingest
                log.error("rule %s skipped: %s", r["id"], exc)
        return rules

    async def _rules_version_now(self, con) -> tuple:
        row = await con.fetchrow("SELECT count(*) AS n, max(updated_at) AS t FROM rules")
        return (row["n"], row["t"])

    async def start(self) -> None:
        async with self.pool.acquire() as con:
            rules = await self._load_rules(con)
            self._rules_version = await self._rules_version_now(con)
            snap = await con.fetchrow("SELECT state, saved_at FROM alarm_engine_state WHERE name = $1",
                                       self.state_name)
        self._rules = {r.id: r for r in rules}
        self.engine = AlarmEngine(rules)
        self.engine.warmup()
        if snap is not None:
            try:
                self._restore(bytes(snap["state"]))
            except (ValueError, KeyError) as exc:  # e.g. a snapshot from an older state version
                log.warning("alarm engine snapshot not usable (%s): starting with fresh state", exc)
                self.engine = AlarmEngine(rules)
                self.meta, self._index, self._by_device = [], {}, {}
        if self.journal_pending:
            async with self.pool.acquire() as con:
                await self._replay_journal(con)
        if self.reconcile:
            async with self.pool.acquire() as con:
                await self._reconcile(con, snap["saved_at"] if snap is not None else None)
        self._tasks = [asyncio.create_task(self._timer(), name="alarm-timer")]
        log.info("alarm engine: %d rules, %d series restored", len(rules), len(self.meta))

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        try:
            async with self.lock:
                await self.save_state()
        except Exception:
            log.exception("could not save alarm engine state on shutdown")

    async def _reconcile(self, con, saved_at) -> None:
        """The alerts table, not the snapshot, says which alerts are open.

        The snapshot can be up to ``save_interval_s`` older than what was committed and acknowledged
        before a crash, and acknowledged messages are never redelivered: an alert cleared since the
        snapshot would still fire here and the next raise would be lost (found by ``wulian chaos``).
        Every (rule, series) with an open alert or a transition since the snapshot takes the database's
        state, and its series ignores readings up to that alert's latest event time (evaluated before
        the crash; redelivered ones are replays)."""
        since = saved_at - datetime.timedelta(seconds=60) if saved_at is not None else datetime.datetime.min.replace(
            tzinfo=datetime.timezone.utc)
        rows = await con.fetch(
            "SELECT a.rule_id, a.device, a.device_id, a.region, a.stream, a.metric, d.device_type,"
            " a.state IN ('active', 'acknowledged') AS open,"
            " (extract(epoch FROM CASE WHEN a.state IN ('active', 'acknowledged') THEN a.last_seen"
            "  ELSE coalesce(a.cleared_at, a.last_seen) END) * 1000000)::bigint * 1000 AS t_ns"
            " FROM alerts a JOIN devices d ON d.id = a.device"
            " WHERE a.rule_id = ANY($2::bigint[]) AND (a.state IN ('active', 'acknowledged') OR a.updated_at >= $1)"
            " ORDER BY a.id", since, list(self._rules))
        if not rows:
            return
        want: dict[tuple[int, int], tuple[bool, int]] = {}
        for r in rows:  # the latest alert of each (rule, series) wins
            s = self._series(r["device"], r["device_id"], r["region"], r["stream"], r["metric"], r["device_type"])
            want[(s, r["rule_id"])] = (r["open"], r["t_ns"])
        st = self.engine.state_arrays()
        pos = {k: i for i, k in enumerate(zip(st["binding_series"].tolist(), st["binding_rule_id"].tolist()))}
        seen, count, since_ns = st["seen_ts_ns"], st["count"], st["since_ns"]
        fixed = 0
        for (s, rule_id), (is_open, t_ns) in want.items():
            i = pos.get((s, rule_id))
            if i is None:  # the rule no longer binds this series
                continue
            if is_open != (count[i] > 0):
                count[i] = 1 if is_open else -abs(count[i])
                since_ns[i] = NO_TS
                fixed += 1
            seen[s] = max(seen[s], t_ns)
        self.engine.load_state(st)
        log.info("alarm engine reconciled with %d alerts (%d states corrected)", len(want), fixed)

    async def _replay_journal(self, con) -> None:
        """Apply the pending-state changes committed after the restored snapshot (``seq`` above its own)."""
        top = await con.fetchval("SELECT coalesce(max(seq), 0) FROM alarm_pending_journal WHERE name = $1",
                                 self.state_name)
        rows = await con.fetch(
            "SELECT j.rule_id, j.device, j.device_id, j.region, j.stream, j.metric, d.device_type, j.count,"
            " j.since_ns, j.ref_ts_ns, j.ref_value, j.seen_ts_ns"
            " FROM alarm_pending_journal j JOIN devices d ON d.id = j.device"
            " WHERE j.name = $1 AND j.seq > $2 AND j.rule_id = ANY($3::bigint[])",
            self.state_name, self._seq, list(self._rules))
        self._seq = max(self._seq, int(top))
        if not rows:
            return
        series = [self._series(r["device"], r["device_id"], r["region"], r["stream"], r["metric"], r["device_type"])
                  for r in rows]
        cols = {"binding_series": (series, np.int64), "binding_rule_id": ([r["rule_id"] for r in rows], np.int64)}
        for name, dtype in (("count", np.int64), ("since_ns", np.int64), ("ref_ts_ns", np.int64),
                            ("ref_value", np.float64), ("seen_ts_ns", np.int64)):
            cols[name] = ([r[name] for r in rows], dtype)
        self.engine.apply_changes({k: np.asarray(v, dt) for k, (v, dt) in cols.items()})
        log.info("alarm engine: %d pending-state changes since the snapshot applied", len(rows))

    async def _journal(self, con: asyncpg.Connection, pending: PendingAlerts) -> None:
        """Upsert this batch's pending-state changes (sorted by key: concurrent batches lock rows in one
        order)."""
        j = pending.journal
        if j is None or j["binding_series"].shape[0] == 0:
            return
        meta = self.meta
        rows = sorted((r, meta[s].device_id, meta[s].metric, s, i) for i, (s, r) in enumerate(
            zip(j["binding_series"].tolist(), j["binding_rule_id"].tolist())))
        at = [x[4] for x in rows]
        ms = [meta[x[3]] for x in rows]
        await con.execute(
            _JOURNAL_UPSERT, self.state_name, [x[0] for x in rows], [x[1] for x in rows], [x[2] for x in rows],
            [x.device for x in ms], [x.region for x in ms], [x.stream for x in ms], [pending.seq] * len(rows),
            *(j[name][at].tolist() for name in ("count", "since_ns", "ref_ts_ns", "ref_value", "seen_ts_ns")))
        m.ALARM_JOURNAL_ROWS.inc(len(rows))

    # -- series -----------------------------------------------------------------------------------
    def _series(self, dev, device_id: str, region: str, stream: str, metric: str, device_type: str | None) -> int:
        key = (device_id, metric)
        idx = self._index.get(key)
        if idx is None:
            idx = int(self.engine.add_series([SeriesKey(stream, device_id, metric, device_type)])[0])
            self._index[key] = idx
            self.meta.append(SeriesMeta(dev, device_id, region, stream, metric))
        return idx

    def _series_many(self, wanted: list[tuple[SeriesDevice, str]]) -> list[int]:
        """Series indexes of (device, metric) pairs (distinct), the new ones added to the engine in one
        call, in the order given (binding each series alone cost ~1 ms: 10 s for 10,000 at start)."""
        out: list[int] = []
        new: list[tuple[int, SeriesDevice, str]] = []
        for dev, metric in wanted:
            idx = self._index.get((dev.device_id, metric))
            if idx is None:
                new.append((len(out), dev, metric))
                idx = -1
            out.append(idx)
        if new:
            ids = self.engine.add_series([SeriesKey(d.stream, d.device_id, metric, d.device_type)
                                          for _, d, metric in new]).tolist()
            for (pos, d, metric), idx in zip(new, ids):
                self._index[(d.device_id, metric)] = out[pos] = idx
                self.meta.append(SeriesMeta(d.id, d.device_id, d.region, d.stream, metric))
        return out

    @property
    def has_rules(self) -> bool:
        """False while no rule is enabled: the caller may skip building the batch's arrays."""
        return bool(self._rules)

    def evaluate(self, batch: ReadingArrays) -> PendingAlerts:
        """Run the engine over one batch's values; no I/O. Each distinct (device, metric) of the batch is
        looked up (or added) as a series once, in order of first appearance, then the engine takes the
        arrays as they are."""
        if not self._rules or len(batch) == 0:
            return PendingAlerts(Transitions.empty())
        n_metrics = max(len(batch.metrics), 1)
        pair = batch.device.astype(np.int64) * n_metrics + batch.metric
        uniq, first, inverse = np.unique(pair, return_index=True, return_inverse=True)
        order = np.argsort(first, kind="stable")  # series are added in the order values arrive
        by_device = self._by_device
        known_of = []
        for dev in batch.devices:
            known = by_device.get(dev.device_id)
            if known is None:
                known = by_device[dev.device_id] = {}
            known_of.append(known)
        devices, metrics = batch.devices, batch.metrics
        found: list[int] = []
        missing: list[tuple[int, int, int]] = []  # (position in found, device key, metric key)
        for dk, mk in zip((uniq[order] // n_metrics).tolist(), (uniq[order] % n_metrics).tolist()):
            i = known_of[dk].get(metrics[mk])
            if i is None:
                missing.append((len(found), dk, mk))
                i = -1
            found.append(i)
        if missing:  # one catalogue update for all of them: a cold start meets thousands at once
            new = self._series_many([(devices[dk], metrics[mk]) for _, dk, mk in missing])
            for (pos, dk, mk), i in zip(missing, new):
                found[pos] = known_of[dk][metrics[mk]] = i
        series = np.empty(len(uniq), np.int32)
        series[order] = found
        watched = self.engine.watch(series) if self.journal_pending else None
        pending = PendingAlerts(self.engine.update_many(series[inverse.reshape(-1)], batch.ts_ns, batch.value,
                                                        batch.flag))
        if watched is not None:
            changes = self.engine.changed_since(watched)
            if changes["binding_series"].shape[0]:
                self._seq += 1
                pending.journal, pending.seq = changes, self._seq
        return pending

    # -- writing ----------------------------------------------------------------------------------
    async def write(self, con: asyncpg.Connection, *, pending: PendingAlerts) -> None:
        """Apply transitions (and journal pending-state changes) to the database; call inside the batch's
        transaction."""
        await self._journal(con, pending)
        tr = pending.transitions
        if len(tr) == 0:
            return
        events = pending.events = []
        updates = UpdateCoalescer()
        for s, rule_id, kind, ts, value, _flag, _count in tr.rows():
            meta = self.meta[s]
            rule = self._rules.get(rule_id)
            if rule is None:
                continue
            # Keyed by metric for every kind: a missing-data rule watches each series it binds to, so
            # "device offline" is a rule scoped to the device's heartbeat metric (README).
            metric = meta.metric
            target = AlertTarget(rule_id, meta.device, meta.device_id, meta.region, meta.stream, metric,
                                 rule.severity.value, _title(rule, metric))
            if kind is TransitionKind.UPDATE:
                # peak = the worst value: lowest for a lower limit, and for a trend (seconds left to the limit)
                updates.add(target, ts, value, rule.kind in (RuleKind.LOWER, RuleKind.TREND))
                continue
            await updates.flush_one(con, target)  # this alert's repeated triggers come before its change
            if kind is TransitionKind.RAISE:
                ev = await raise_alert(con, target, ts, value)
                self.raised += ev is not None
            else:
                ev = await clear_alert(con, target, ts, value)
                self.cleared += ev is not None
            if ev is not None:
                events.append(ev)
        await updates.flush(con)

    def event_topic(self, ev: dict) -> str:
        """The MQTT topic of an alert event: ``{prefix}/{region}/alerts/{stream}/{device_id}``."""
        return f"{self.prefix}/{ev['region']}/{ALERTS_SEGMENT}/{ev['stream']}/{ev['device_id']}"

    def after_commit(self, pending: PendingAlerts) -> None:
        for ev in pending.events:
            m.ALERTS.labels(ev["event"]).inc()
            if self.publish is not None:
                topic = self.event_topic(ev)
                try:
                    self.publish(topic, orjson.dumps(ev))
                except Exception:
                    log.exception("could not publish alert event to %s", topic)

    # -- timer, rules, persistence ------------------------------------------------------------------
    async def tick(self, now_ns: int | None = None) -> PendingAlerts:
        async with self.lock:
            pending = PendingAlerts(self.engine.tick(self.clock_ns() if now_ns is None else now_ns))
            if len(pending.transitions):
                async with self.pool.acquire() as con:
                    async with con.transaction():
                        await self.guard(con)
                        await self.write(con, pending=pending)
        self.after_commit(pending)
        return pending

    async def guard(self, con: asyncpg.Connection) -> None:
        """Inside a timer tick's transaction, before its writes: raise to refuse them (cluster mode fences
        a partition's ticks with its ownership); nothing in city mode."""

    async def reload_rules_if_changed(self) -> bool:
        async with self.pool.acquire() as con:
            version = await self._rules_version_now(con)
            if version == self._rules_version:
                return False
            rules = await self._load_rules(con)
        async with self.lock:
            self.engine.set_rules(rules)
            self._rules = {r.id: r for r in rules}
            self._rules_version = version
        log.info("alarm rules reloaded: %d enabled", len(rules))
        return True

    async def _timer(self) -> None:
        last_save = last_rules = time.monotonic()
        while True:
            await asyncio.sleep(self.tick_interval_s)
            try:
                await self.tick()
                now = time.monotonic()
                if now - last_rules >= self.rules_poll_s:
                    last_rules = now
                    await self.reload_rules_if_changed()
                if now - last_save >= self.save_interval_s:
                    last_save = now
                    async with self.lock:
                        await self.save_state()
            except Exception:
                log.exception("alarm timer failed; retrying")

    def _snapshot(self) -> bytes:
        buf = io.BytesIO()
        arrays = self.engine.state_arrays()
        meta = orjson.dumps([[x.device, x.device_id, x.region, x.stream, x.metric] for x in self.meta])
        keys = orjson.dumps([[k.stream, k.device_id, k.metric, k.device_type] for k in self.engine.catalogue.keys()])
        np.savez(buf, meta=np.frombuffer(meta, np.uint8), keys=np.frombuffer(keys, np.uint8),
                 journal_seq=np.array([self._seq], np.int64), **arrays)
        return buf.getvalue()

    def _restore(self, blob: bytes) -> None:
        with np.load(io.BytesIO(blob)) as z:
            data = {k: z[k] for k in z.files}
        keys = [SeriesKey(*k) for k in orjson.loads(data.pop("keys").tobytes())]
        meta = [SeriesMeta(*x) for x in orjson.loads(data.pop("meta").tobytes())]
        seq = data.pop("journal_seq", None)  # absent in snapshots older than the pending journal
        self._seq = int(seq[0]) if seq is not None else 0
        self.engine.add_series(keys)
        self.meta = meta
        self._index = {(x.device_id, x.metric): i for i, x in enumerate(meta)}
        self._by_device = {}
        self.engine.load_state(data)

    async def save_state(self, con: asyncpg.Connection | None = None) -> None:
        """Upsert the snapshot, on ``con`` (inside the caller's transaction) or a pooled connection, and
        delete the journal rows it covers. Call under ``lock`` (the snapshot and ``_seq`` must agree)."""
        if con is None:
            async with self.pool.acquire() as con:
                async with con.transaction():
                    return await self.save_state(con)
        await con.execute(
            "INSERT INTO alarm_engine_state (name, state) VALUES ($1, $2)"
            " ON CONFLICT (name) DO UPDATE SET state = EXCLUDED.state, saved_at = now()",
            self.state_name, self._snapshot())
        if self.journal_pending:
            await con.execute("DELETE FROM alarm_pending_journal WHERE name = $1 AND seq <= $2",
                              self.state_name, self._seq)
