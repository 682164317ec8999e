"""City-mode ingest killed (-9) between alarm engine snapshots: a pending window that spans the crash fires
exactly once, at the right time, and a pending period cancelled after the snapshot stays cancelled.

Kill -9 is emulated by an ingest run whose ``save_state`` does nothing: its batches commit and are
acknowledged (never redelivered) but the snapshot stays the one before them, as after a crash."""
import uuid
from datetime import datetime, timezone

import orjson
import pytest

from wulian.api.auth import create_key
from wulian.ingest.alarm_service import AlarmService
from wulian.ingest.mqtt_client import MqttPublisher
from wulian.ingest.service import mqtt_params, running_ingestor
from tests.conftest import wait_until
from tests.test_alerts import NOW_MS


async def _setup(pool, api):
    async with pool.acquire() as con:
        admin = await create_key(con, name="admin", role="admin", regions=[])
    region, dev = f"r{uuid.uuid4().hex[:6]}", f"GM{uuid.uuid4().hex[:6]}"
    r = await api.post("/v1/rules", headers={"Authorization": f"Bearer {admin}"},
                       json={"name": "overvoltage", "kind": "upper", "stream": "grid", "device_id": dev, "metric": "Ua",
                             "threshold": 235.4, "pending_s": 60, "severity": "critical"})
    assert r.status_code == 201, r.text
    return f"wl/{region}/grid/{dev}/telemetry", dev


async def _ingest(settings, pool, topic, docs, *, crash=False, monkeypatch=None):
    """One ingest process that takes ``docs`` (committed, acknowledged); ``crash``: no snapshot on exit."""
    if crash:
        async def no_save(self, con=None):  # kill -9: the snapshot is never written
            return None
        monkeypatch.setattr(AlarmService, "save_state", no_save)
    try:
        async with running_ingestor(settings, pool) as ing:
            with MqttPublisher(mqtt_params(settings, client_id=f"pub-{uuid.uuid4().hex[:6]}")) as pub:
                for d in docs:
                    pub.publish(topic, orjson.dumps(d))
                assert pub.wait_acked(10)
            await wait_until(lambda: ing.stats.messages >= len(docs), event=ing.committed)
    finally:
        if crash:
            monkeypatch.undo()


async def _raised(pool, dev):
    async with pool.acquire() as con:
        return await con.fetch(
            "SELECT e.event_time FROM alert_events e JOIN alerts a ON a.id = e.alert_id"
            " WHERE a.device_id = $1 AND e.event = 'raised' ORDER BY e.id", dev)


async def test_pending_window_started_after_the_snapshot_fires_once_after_kill(settings, pool, api, monkeypatch):
    topic, dev = await _setup(pool, api)
    t0 = NOW_MS() - 300_000
    await _ingest(settings, pool, topic, [{"ts": t0 - 10_000, "values": {"Ua": 230.0}}])  # snapshot: no pending
    await _ingest(settings, pool, topic, [{"ts": t0, "values": {"Ua": 240.0}},
                                          {"ts": t0 + 30_000, "values": {"Ua": 241.0}}], crash=True,
                  monkeypatch=monkeypatch)
    assert await _raised(pool, dev) == []
    await _ingest(settings, pool, topic, [{"ts": t0 + 61_000, "values": {"Ua": 242.0}},
                                          {"ts": t0 + 90_000, "values": {"Ua": 243.0}}])
    (raise_,) = await _raised(pool, dev)
    assert raise_["event_time"] == datetime.fromtimestamp((t0 + 61_000) / 1000, timezone.utc)
    # and once more across a second crash while the alert is open: still one raise
    await _ingest(settings, pool, topic, [{"ts": t0 + 120_000, "values": {"Ua": 244.0}}], crash=True,
                  monkeypatch=monkeypatch)
    await _ingest(settings, pool, topic, [{"ts": t0 + 200_000, "values": {"Ua": 245.0}}])
    assert len(await _raised(pool, dev)) == 1


async def test_pending_window_cancelled_after_the_snapshot_stays_cancelled_after_kill(settings, pool, api,
                                                                                        monkeypatch):
    topic, dev = await _setup(pool, api)
    t0 = NOW_MS() - 300_000
    await _ingest(settings, pool, topic, [{"ts": t0, "values": {"Ua": 240.0}}])  # snapshot: pending since t0
    await _ingest(settings, pool, topic, [{"ts": t0 + 30_000, "values": {"Ua": 230.0}}], crash=True,
                  monkeypatch=monkeypatch)  # cancels it, after the snapshot
    await _ingest(settings, pool, topic, [{"ts": t0 + 61_000, "values": {"Ua": 242.0}}])  # a new pending period
    assert await _raised(pool, dev) == []
    await _ingest(settings, pool, topic, [{"ts": t0 + 121_000, "values": {"Ua": 242.0}}])  # ... that completes
    (raise_,) = await _raised(pool, dev)
    assert raise_["event_time"] == datetime.fromtimestamp((t0 + 121_000) / 1000, timezone.utc)


@pytest.mark.parametrize("impl", ["numba", "python"])
def test_journalled_changes_rebuild_the_pending_state_on_an_older_snapshot(impl):
    """Engine level: snapshot, then batches; the changes they report, applied to the snapshot, give the
    same transitions afterwards as the engine that never stopped."""
    import numpy as np

    from wulian.core.alarms.compiler import SeriesKey
    from wulian.core.alarms.engine import AlarmEngine
    from wulian.core.alarms.rules import Rule, RuleKind

    rules = [Rule(1, "hi", RuleKind.UPPER, threshold=10.0, pending_s=60),
             Rule(2, "flat", RuleKind.FLATLINE, duration_s=120, tolerance=0.01)]
    keys = [SeriesKey("air", f"d{i}", "m") for i in range(50)]
    rng = np.random.default_rng(7)
    live = AlarmEngine(rules, keys, impl=impl)
    s = 1_000_000_000
    t = np.arange(0, 600, 10) * s

    def batch(k):
        series = np.repeat(np.arange(50, dtype=np.int32), 3)
        ts = np.tile(t[3 * k: 3 * k + 3], 50)
        vals = np.where(rng.random(series.shape[0]) < 0.6, 12.0, 5.0).round()
        return series, ts, vals

    for k in range(4):
        live.update_many(*batch(k))
    snap = live.state_arrays()
    changes = []
    for k in range(4, 10):
        series, ts, vals = batch(k)
        watched = live.watch(np.unique(series))
        live.update_many(series, ts, vals)
        changes.append(live.changed_since(watched))
    restarted = AlarmEngine(rules, keys, impl=impl)
    restarted.load_state(snap)
    for c in changes:
        restarted.apply_changes(c)
    transitions = 0
    for k in range(10, 20):
        series, ts, vals = batch(k)
        a = live.update_many(series, ts, vals).canonical()
        b = restarted.update_many(series, ts, vals).canonical()
        # an open alert's trigger count is not journalled (the alerts table counts its triggers)
        for f in ("series", "rule_id", "kind", "ts_ns", "value"):
            assert np.array_equal(getattr(a, f), getattr(b, f)), f
        transitions += len(a)
    assert transitions > 20
