"""Energy and transport online: the simulated scenario through MQTT and ingest, the derive jobs once,
their tables and alerts, the API with region scope, and idempotent re-runs."""
import asyncio
import time
import uuid
from datetime import datetime, timezone

import pytest

from wulian.core.timebase import china_day
from wulian.api.auth import create_key
from wulian.core.const import SYSTEM_RULE_BASE
from wulian.ingest.derive_service import run_job_once
from wulian.ingest.jobs.grid import GridJob
from wulian.ingest.jobs.meters import MeterJob
from wulian.ingest.codecs import jt808
from wulian.ingest.jobs.vehicles import VehicleJob
from wulian.ingest.jobs.vehicles import create as create_vehicle_job
from wulian.ingest.mqtt_client import MqttPublisher
from wulian.ingest.service import mqtt_params, running_ingestor
from wulian.simulators.energy_transport import build_scenario, messages, publish, register
from tests.conftest import wait_until
from tests.helpers import api_client
from wulian.settings import DbSettings, EnergySettings, IngestSettings, MqttSettings, Settings

_MIN = 60 * 10**9
JOB_NAMES = ("vehicles", "grid", "meters")

def _jobs():
    # Whole scenario in one run each: it reaches ~29 h back for vehicles and 4 days for meters.
    return [VehicleJob(backfill_h=40, max_span_h=72), GridJob(backfill_h=30, max_span_h=72),
            MeterJob(backfill_h=24 * 5, max_span_h=24 * 6)]


async def _run_jobs(pool, now_ns: int) -> dict:
    return {j.name: await run_job_once(j, pool, now_ns + j.lag_ns) for j in _jobs()}


_BY_DEVICE = ("vehicle_violations", "grid_quality_daily", "grid_events", "transformer_warnings",
              "meter_consumption_daily", "meter_anomalies")
_BY_REGION = ("vehicle_kpis", "grid_outages", "feeder_forecasts", "meter_collection_daily")


async def _counts(pool, region: str) -> dict:
    """Row counts of this test's region only: other tests share the database and its jobs."""
    async with pool.acquire() as con:
        out = {t: await con.fetchval(
            f"SELECT count(*) FROM {t} x JOIN devices d ON d.id = x.device WHERE d.region = $1", region)
            for t in _BY_DEVICE}
        out.update({t: await con.fetchval(f"SELECT count(*) FROM {t} WHERE region = $1", region) for t in _BY_REGION})
        out["alerts"] = await con.fetchval("SELECT count(*) FROM alerts WHERE rule_id >= $1 AND region = $2",
                                           SYSTEM_RULE_BASE, region)
        out["alert_events"] = await con.fetchval(
            "SELECT count(*) FROM alert_events e JOIN alerts a ON a.id = e.alert_id WHERE a.rule_id >= $1"
            " AND a.region = $2", SYSTEM_RULE_BASE, region)
    return out


@pytest.fixture(scope="module")
async def world(test_dsn, broker, pool):
    """Register, publish and ingest the scenario once, then run the three jobs once."""
    region = f"e{uuid.uuid4().hex[:6]}"
    tag = f"X{uuid.uuid4().hex[:4]}"
    settings = Settings(db=DbSettings(dsn=test_dsn),
                        mqtt=MqttSettings(port=broker.port, client_id=f"test-et-{uuid.uuid4().hex[:8]}",
                                          session_expiry_s=20),
                        ingest=IngestSettings(batch_size=2000, batch_delay_ms=5, metrics_port=0))
    async with pool.acquire() as con:
        await con.execute("DELETE FROM job_watermarks WHERE job = ANY($1::text[])", list(JOB_NAMES))
    end_ns = (time.time_ns() - 2 * _MIN) // 10**9 * 10**9
    sc = build_scenario(end_ns, tag=tag)
    n_msgs = sum(1 for _ in messages(sc, region))
    async with pool.acquire() as con:
        await register(con, sc, region)
    async with running_ingestor(settings, pool) as ing:
        out = await asyncio.to_thread(publish, sc, mqtt_params(settings, client_id=f"pub-{tag}"), region)
        assert out["complete"] and out["refused"] == 0
        await wait_until(lambda: ing.stats.messages >= n_msgs, timeout=60, event=ing.committed)
        assert ing.stats.dead_letters == 0
    stats = await _run_jobs(pool, end_ns)
    async with pool.acquire() as con:
        ids = {r["device_id"]: r["id"] for r in await con.fetch(
            "SELECT id, device_id FROM devices WHERE region = $1", region)}
        keys = {
            "admin": await create_key(con, name="et-admin", role="admin", regions=[]),
            "regulator": await create_key(con, name="et-reg", role="regulator", regions=[region]),
            "other": await create_key(con, name="et-other", role="regulator", regions=["elsewhere"]),
        }
    return {"region": region, "tag": tag, "end_ns": end_ns, "sc": sc, "ids": ids, "stats": stats, "keys": keys,
            "settings": settings}


@pytest.fixture(scope="module")
async def api(world):
    async with api_client(world["settings"]) as c:
        yield c


def _iso(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, tz=timezone.utc).isoformat()


def h(key):
    return {"Authorization": f"Bearer {key}"}


async def _alerts(pool, device: int, n: int):
    async with pool.acquire() as con:
        return await con.fetch("SELECT * FROM alerts WHERE device = $1 AND rule_id = $2 ORDER BY id", device,
                               SYSTEM_RULE_BASE + n)


async def test_vehicle_violations_and_alerts(world, pool):
    tag, ids = world["tag"], world["ids"]
    async with pool.acquire() as con:
        rows = await con.fetch(
            "SELECT d.device_id, v.rule, v.aux, v.value, v.open, v.details::text AS details,"
            " extract(epoch FROM v.end_time - v.start_time) AS dur FROM vehicle_violations v"
            " JOIN devices d ON d.id = v.device WHERE d.region = $1", world["region"])
    got = {(r["device_id"], r["rule"]) for r in rows}
    assert {(f"{tag}-C2", "fatigue"), (f"{tag}-C3", "night_coach"), (f"{tag}-C3", "overtime_parking"),
            (f"{tag}-T1", "geofence"), (f"{tag}-T1", "terminal_alarm"), (f"{tag}-T2", "overspeed"),
            (f"{tag}-T2", "offline_jump")} == got
    by = {(r["device_id"], r["rule"]): r for r in rows}
    assert 4.0 < by[(f"{tag}-C2", "fatigue")]["value"] < 4.3  # 4 h 10 min continuous driving
    assert not by[(f"{tag}-C2", "fatigue")]["open"]  # the 25 min rest closed it
    assert by[(f"{tag}-T2", "offline_jump")]["value"] > 20  # ~30 km while silent
    assert '"emergency"' in by[(f"{tag}-T1", "terminal_alarm")]["details"]
    assert by[(f"{tag}-T2", "overspeed")]["value"] > 90 and by[(f"{tag}-T2", "overspeed")]["dur"] >= 60
    # Alerts follow the episodes: raised at the start, cleared at the end.
    (fat,) = await _alerts(pool, ids[f"{tag}-C2"], 102)
    assert fat["state"] == "cleared" and fat["severity"] == "major"
    (geo,) = await _alerts(pool, ids[f"{tag}-T1"], 106)
    assert geo["severity"] == "critical" and geo["metric"].startswith("geofence.")
    (alarm,) = await _alerts(pool, ids[f"{tag}-T1"], 109)
    assert alarm["metric"] == "jt808.emergency" and alarm["severity"] == "critical"
    # 紧急报警 is cleared by the terminal only after the platform answers (JT/T 808 Table 24/25).
    assert "cleared after the platform answers" in alarm["title"]
    assert '"clear": "cleared_after_answer"' in by[(f"{tag}-T1", "terminal_alarm")]["details"]
    assert await _alerts(pool, ids[f"{tag}-C1"], 102) == []  # rested in time: no fatigue
    assert await _alerts(pool, ids[f"{tag}-C1"], 107) == []  # stayed on its route


async def test_vehicle_kpis(world, pool):
    tag, region = world["tag"], world["region"]
    async with pool.acquire() as con:
        rows = await con.fetch("SELECT * FROM vehicle_kpis WHERE region = $1 AND scope = 'enterprise'", region)
        reg = await con.fetch("SELECT * FROM vehicle_kpis WHERE region = $1 AND scope = 'region'", region)
    ent = {}
    for r in rows:
        ent.setdefault(r["grp"], []).append(r)
    assert set(ent) == {f"{tag}-coach-co", f"{tag}-hazmat-co"}
    assert all(r["registered"] == 3 for r in ent[f"{tag}-coach-co"])
    assert all(r["registered"] == 2 and r["network_rate"] == 1.0 for r in ent[f"{tag}-hazmat-co"])
    assert sum(r["overspeed_count"] for r in ent[f"{tag}-hazmat-co"]) == 1
    assert sum(r["night_violations"] for r in ent[f"{tag}-coach-co"]) == 1
    # fatigue hours: time driven beyond the 4 h limit, i.e. the last 10 min before the rest
    assert 0.15 < sum(r["fatigue_hours"] for r in ent[f"{tag}-coach-co"]) < 0.2
    # every simulated point is valid; the region rows add the enterprises up
    for r in rows:
        if r["online"]:
            assert r["valid_rate"] == 1.0 and r["drift_rate"] == 0.0
            assert r["online_rate"] == r["online"] / r["networked"]
    assert sum(r["online"] for r in reg) == sum(r["online"] for r in rows)
    assert {r["registered"] for r in reg} == {5}


async def test_grid_quality_outage_transformer_forecast(world, pool):
    tag, ids, region = world["tag"], world["ids"], world["region"]
    async with pool.acquire() as con:
        q = {(r["device_id"]): r for r in await con.fetch(
            "SELECT d.device_id, min(q.voltage_rate) AS vr, sum(q.overload_samples) AS ov"
            " FROM grid_quality_daily q JOIN devices d ON d.id = q.device WHERE d.region = $1 GROUP BY 1", region)}
        events = {(r["device_id"], r["kind"]) for r in await con.fetch(
            "SELECT d.device_id, e.kind FROM grid_events e JOIN devices d ON d.id = e.device WHERE d.region = $1",
            region)}
        outages = await con.fetch("SELECT * FROM grid_outages WHERE region = $1", region)
        tx = await con.fetchrow("SELECT * FROM transformer_warnings WHERE device = $1 AND quantity = 'oil_temp'",
                                ids[f"{tag}-F1-TX"])
        fc = await con.fetch("SELECT * FROM feeder_forecasts WHERE region = $1", region)
    assert q[f"{tag}-F2-M1"]["vr"] < 1.0 and q[f"{tag}-F1-M1"]["vr"] == 1.0
    assert q[f"{tag}-F1-M2"]["ov"] >= 5 and q[f"{tag}-F1-M1"]["ov"] == 0
    assert {(f"{tag}-F2-M1", "voltage"), (f"{tag}-F1-M2", "overload")} <= events
    (out,) = outages
    assert out["feeder"] == f"{tag}-F2" and not out["open"] and out["meters"] == 3
    assert 40 <= (out["end_time"] - out["start_time"]).total_seconds() / 60 <= 50
    (alert,) = await _alerts(pool, ids[f"{tag}-F2-M1"], 210)
    assert alert["metric"] == f"feeder.{tag}-F2" and alert["state"] == "cleared"
    assert tx["warn"] and tx["slope_per_h"] > 4
    (txa,) = await _alerts(pool, ids[f"{tag}-F1-TX"], 211)
    assert txa["state"] == "active"
    feeders = {r["feeder"] for r in fc}
    assert feeders == {f"{tag}-F1", f"{tag}-F2"}
    assert all(r["load_kw"] > 0 for r in fc)


async def test_meter_consumption_anomalies_collection(world, pool):
    tag, ids, region = world["tag"], world["ids"], world["region"]
    async with pool.acquire() as con:
        daily = await con.fetch(
            "SELECT d.device_id, c.* FROM meter_consumption_daily c JOIN devices d ON d.id = c.device"
            " WHERE d.region = $1", region)
        anomalies = {(r["device_id"], r["metric"], r["kind"]): r for r in await con.fetch(
            "SELECT d.device_id, a.* FROM meter_anomalies a JOIN devices d ON d.id = a.device WHERE d.region = $1",
            region)}
        coll = await con.fetch("SELECT * FROM meter_collection_daily WHERE region = $1 ORDER BY day", region)
    assert {r["metric"] for r in daily if r["device_id"] == f"{tag}-H4"} == {"energy_active_import_kwh", "water_m3",
                                                                             "gas_m3"}
    water_h1 = [r for r in daily if r["device_id"] == f"{tag}-H1" and r["metric"] == "water_m3" and r["complete"]]
    assert water_h1 and all(r["min_night_rate_per_h"] in (None, 0.0) for r in water_h1)
    leak_days = [r for r in daily if r["device_id"] == f"{tag}-H3" and r["metric"] == "water_m3"
                 and r["min_night_rate_per_h"] is not None]
    assert leak_days and all(r["min_night_rate_per_h"] >= 0.045 for r in leak_days)
    back = anomalies[(f"{tag}-H2", "elec_kwh", "backwards")]
    assert back["previous"] - back["value"] > 29  # wound back by 30 kWh
    tamper_day = [r for r in daily if r["device_id"] == f"{tag}-H2" and r["metric"] == "elec_kwh" and r["backwards"]]
    assert len(tamper_day) == 1 and not tamper_day[0]["complete"]
    leak = anomalies[(f"{tag}-H3", "water_m3", "night_leak")]
    assert leak["open"] and leak["value"] >= 3
    assert anomalies[(f"{tag}-H3", "gas_m3", "gas_never_stops")]["open"]
    assert not any(k[0] == f"{tag}-H1" for k in anomalies)
    (tamper,) = await _alerts(pool, ids[f"{tag}-H2"], 301)
    assert tamper["state"] == "active" and tamper["metric"] == "elec_kwh"  # stays open for a person
    (leak_alert,) = await _alerts(pool, ids[f"{tag}-H3"], 305)
    assert leak_alert["state"] == "active"
    assert all(r["meters"] == 12 and r["expected"] == 12 * 96 for r in coll)  # 4 households x 3 registers
    full = [r for r in coll if r["received"]][1:-1]  # whole days inside the scenario
    assert len(full) >= 2
    missed = sum(r["expected"] - r["received"] for r in full)
    assert 0 < missed <= 12 * 3  # H4 dropped 12 records of 3 registers over the 4 days


async def test_api_routes_and_region_scope(world, api):
    tag, keys = world["tag"], world["keys"]
    reg, other = h(keys["regulator"]), h(keys["other"])
    r = await api.get("/v1/vehicles/violations", params={"rule": "fatigue"}, headers=reg)
    assert r.status_code == 200, r.text
    (v,) = r.json()["data"]
    assert v["device_id"] == f"{tag}-C2" and v["enterprise"] == f"{tag}-coach-co" and 500 < v["duration_s"] < 700
    r = await api.get("/v1/vehicles/violations", params={"device": f"{tag}-T1"}, headers=reg)
    assert {x["rule"] for x in r.json()["data"]} == {"geofence", "terminal_alarm"}
    assert (await api.get("/v1/vehicles/violations", headers=other)).json() == {"data": [], "count": 0, "next_cursor": None}
    r = await api.get("/v1/vehicles/violations", params={"rule": "speeding"}, headers=reg)
    assert r.status_code == 422
    r = await api.get("/v1/vehicles/kpis", params={"group": f"{tag}-hazmat-co"}, headers=reg)
    assert r.status_code == 200 and r.json()["count"] >= 1
    assert r.json()["data"][0]["group"] == f"{tag}-hazmat-co"
    assert (await api.get("/v1/vehicles/kpis", params={"scope": "region"}, headers=other)).json()["count"] == 0
    assert (await api.get("/v1/vehicles/kpis", params={"from": "2026-02-02", "to": "2026-02-01"},
                          headers=reg)).status_code == 422
    params = {"from": "2000-01-01T00:00:00Z", "to": "2000-01-02T00:00:00Z"}
    r = await api.get(f"/v1/vehicles/{tag}-C3/track", params=params, headers=reg)
    assert r.status_code == 200 and r.json()["count"] == 0
    window = {"from": _iso(world["end_ns"] - 40 * 60 * _MIN), "to": _iso(world["end_ns"])}
    r = await api.get(f"/v1/vehicles/{tag}-C3/track", params=window, headers=reg)
    assert r.status_code == 200 and r.json()["count"] == len(world["sc"].records[f"{tag}-C3"])
    r = await api.get(f"/v1/vehicles/{tag}-C3/track", params={**window, "limit": 5}, headers=reg)
    body = r.json()
    assert r.status_code == 200 and body["count"] == 5 and body["truncated"]
    assert (await api.get(f"/v1/vehicles/{tag}-C3/track", headers=other)).status_code == 404
    assert (await api.get(f"/v1/vehicles/{tag}-H1/track", headers=reg)).status_code == 404  # not a vehicle
    r = await api.get(f"/v1/vehicles/{tag}-C3/track", params={"from": "2026-01-01T00:00:00Z",
                                                              "to": "2026-02-01T00:00:00Z"}, headers=reg)
    assert r.status_code == 422 and "7 days" in r.json()["message"]

    r = await api.get("/v1/grid/quality", params={"feeder": f"{tag}-F2"}, headers=reg)
    assert r.status_code == 200 and {x["device_id"] for x in r.json()["data"]} == {f"{tag}-F2-M{k}" for k in (1, 2, 3)}
    assert (await api.get("/v1/grid/quality", headers=other)).json()["count"] == 0
    r = await api.get("/v1/grid/forecast", params={"feeder": f"{tag}-F1"}, headers=reg)
    (fc,) = r.json()["data"]
    assert len(fc["data"]) == 24  # 6 h of 15-min slots
    assert (await api.get("/v1/grid/forecast", params={"feeder": f"{tag}-F1"}, headers=other)).json()["count"] == 0

    r = await api.get(f"/v1/meters/{tag}-H3/consumption", params={"metric": "water_m3", "from": "2000-01-01",
                                                                  "to": "2000-12-31"}, headers=reg)
    assert r.status_code == 200 and r.json()["count"] == 0
    r = await api.get(f"/v1/meters/{tag}-H3/consumption", params={"metric": "water_m3"}, headers=reg)
    assert r.status_code == 200 and r.json()["count"] >= 3
    assert all(d["consumption"] > 1.0 for d in r.json()["data"] if d["readings"] == 96)  # 0.05 m3/h leak alone is 1.2
    assert (await api.get(f"/v1/meters/{tag}-H3/consumption", headers=other)).status_code == 404
    assert (await api.get("/v1/meters/nobody/consumption", headers=reg)).status_code == 404
    r = await api.get("/v1/meters/anomalies", params={"kind": "night_leak"}, headers=reg)
    assert [x["device_id"] for x in r.json()["data"]] == [f"{tag}-H3"]
    assert (await api.get("/v1/meters/anomalies", params={"kind": "flood"}, headers=reg)).status_code == 422
    assert (await api.get("/v1/meters/anomalies", headers=other)).json()["count"] == 0
    assert (await api.get("/v1/meters/anomalies")).status_code == 401


async def test_reruns_add_nothing(world, pool):
    before = await _counts(pool, world["region"])
    # The same run again from scratch (watermarks reset): every row is found again and upserted in place.
    async with pool.acquire() as con:
        await con.execute("DELETE FROM job_watermarks WHERE job = ANY($1::text[])", list(JOB_NAMES))
    await _run_jobs(pool, world["end_ns"])
    assert await _counts(pool, world["region"]) == before
    # A later run with no new data: nothing new either (open episodes may only be updated).
    stats = await _run_jobs(pool, world["end_ns"] + 5 * _MIN)
    after = await _counts(pool, world["region"])
    assert {k: v for k, v in after.items() if k not in ("feeder_forecasts", "alert_events")} == \
        {k: v for k, v in before.items() if k not in ("feeder_forecasts", "alert_events")}, stats


async def test_incremental_runs_find_the_same_episodes(world, pool):
    """Runs every few hours of data time (as in production) find each episode once, with the start the
    one-shot run found: late-known episodes (offline jump, parking, outage) are not lost, episodes cut
    by the look-back window are not duplicated."""
    before = await _counts(pool, world["region"])
    jobs = [VehicleJob(backfill_h=40, max_span_h=3), GridJob(backfill_h=30, max_span_h=3),
            MeterJob(backfill_h=24 * 5, max_span_h=8)]
    for j in jobs:
        j.name = f"{j.name}_incremental"  # own watermark, same tables
        runs = 0
        while "skipped" not in await run_job_once(j, pool, world["end_ns"] + j.lag_ns):
            runs += 1
        assert runs >= 10
    after = await _counts(pool, world["region"])
    same = ("vehicle_violations", "vehicle_kpis", "grid_quality_daily", "grid_events", "grid_outages",
            "meter_consumption_daily", "meter_anomalies", "meter_collection_daily")
    assert {k: after[k] for k in same} == {k: before[k] for k in same}


def test_fleet_from_registry_attrs():
    from wulian.ingest.jobs.vehicles import build_fleet

    rows = [{"region": "a", "attrs": {"vehicle_class": "hazmat", "enterprise": "E1"}},
            {"region": "a", "attrs": {"vehicle_class": "coach_line", "route": "R", "networked": False,
                                      "night_exempt": ["2026-11-26T00:00", "2026-11-27T00:00+08:00"]}},
            {"region": "b", "attrs": {"vehicle_class": "coach_charter", "enterprise": "E1"}},
            {"region": "b", "attrs": {"vehicle_class": "tractor"}}]
    fleet, ent, reg = build_fleet(rows, {"R": 0})
    assert fleet.vclass.tolist() == [2, 0, 1, -1]  # unknown class: no overspeed limit
    assert fleet.night_ban.tolist() == [False, True, False, False]  # line coaches by default
    assert fleet.route.tolist() == [-1, 0, -1, -1] and fleet.networked.tolist() == [True, False, True, True]
    day = 86_400 * 10**9
    assert fleet.exempt_to_ns[1] - fleet.exempt_from_ns[1] == day  # naive = China time, like the explicit one
    assert fleet.exempt_from_ns[1] % day == 16 * 3600 * 10**9  # 00:00 China = 16:00 UTC
    # enterprises are grouped within their region: the same name in two regions is two groups
    assert ent == [("a", "E1"), ("a", "(unassigned)"), ("b", "E1"), ("b", "(unassigned)")]
    assert fleet.enterprise.tolist() == [0, 1, 2, 3] and reg == ["a", "b"] and fleet.region.tolist() == [0, 0, 1, 1]


async def test_fetch_columns_binary_copy(pool):
    from wulian.ingest.jobs.binary_copy import fetch_columns

    async with pool.acquire() as con:
        cols = await fetch_columns(
            con, "SELECT g::int4, (g * 10000000000)::int8, g / 4.0::float8, g % 2 = 0 FROM generate_series(1, 3) g",
            (), [("a", "i4"), ("b", "i8"), ("c", "f8"), ("d", "bool")])
        assert cols["a"].tolist() == [1, 2, 3] and cols["b"].tolist() == [10**10, 2 * 10**10, 3 * 10**10]
        assert cols["c"].tolist() == [0.25, 0.5, 0.75] and cols["d"].tolist() == [False, True, False]
        empty = await fetch_columns(con, "SELECT 1::int4 WHERE false", (), [("a", "i4")])
        assert len(empty["a"]) == 0
        with pytest.raises(ValueError, match="NULL"):
            await fetch_columns(con, "SELECT g::int4, CASE WHEN g = 2 THEN NULL ELSE 1.0 END::float8"
                                     " FROM generate_series(1, 3) g", (), [("a", "i4"), ("b", "f8")])


async def test_episode_at_a_new_vehicles_first_point_is_kept(world, pool):
    """A terminal that comes online with an alarm bit already set: the episode starts at its first point
    and must not be mistaken for one cut by the look-back window."""
    dev = f"{world['tag']}-NEW"
    t0_us = (world["end_ns"] - 2 * 60 * _MIN) // 1000
    async with pool.acquire() as con:
        did = await con.fetchval(
            "INSERT INTO devices (device_id, region, stream, attrs) VALUES ($1, $2, 'vehicle',"
            " '{\"vehicle_class\": \"hazmat\"}') RETURNING id", dev, world["region"])
        await con.execute(
            "INSERT INTO vehicle_positions (time, device, lat, lon, speed_kmh, alarm_bits)"
            " SELECT timestamptz 'epoch' + ($2::int8 + k * 10000000) * interval '1 microsecond', $1,"
            "  23.0 + k * 0.0001, 116.0, 40, CASE WHEN k < 6 THEN 1 ELSE 0 END FROM generate_series(0, 60) k",
            did, t0_us)
    job = VehicleJob(backfill_h=1, max_span_h=3)
    job.name = "vehicles_new_terminal"
    await run_job_once(job, pool, world["end_ns"] + job.lag_ns)
    async with pool.acquire() as con:
        rows = await con.fetch("SELECT rule, (extract(epoch FROM start_time) * 1000000)::int8 AS s_us, open"
                               " FROM vehicle_violations WHERE device = $1", did)
    assert [(r["rule"], r["s_us"], r["open"]) for r in rows] == [("terminal_alarm", t0_us, False)]
    (alert,) = await _alerts(pool, did, 109)
    assert alert["state"] == "cleared" and alert["metric"] == "jt808.emergency"


async def _violations(pool, did: int) -> list:
    async with pool.acquire() as con:
        return await con.fetch("SELECT rule, aux, open, details::text AS details FROM vehicle_violations"
                               " WHERE device = $1 ORDER BY rule, aux", did)


async def test_terminal_alarm_bits_follow_each_terminals_edition(world, pool):
    """2013 and 2019 terminals in one run: the same alarm word (bits 15 and 31) is 违规行驶 for the 2019
    terminal and 非法开门 for the 2013 one. Raw frames go through MQTT and ingest, which keeps each
    position's edition, to the vehicle job."""
    region, tag = world["region"], world["tag"]
    phones = {"2013": "1" + str(uuid.uuid4().int)[:10], "2019": "1" + str(uuid.uuid4().int)[:10]}
    t0 = (world["end_ns"] - 30 * _MIN) // 10**9 * 10**9
    async with pool.acquire() as con:
        dids = {e: await con.fetchval(
            "INSERT INTO devices (device_id, region, stream, device_type, attrs) VALUES ($1, $2, 'vehicle',"
            " 'jt808_terminal', '{\"vehicle_class\": \"hazmat\"}') RETURNING id", phone, region)
            for e, phone in phones.items()}
    settings = Settings(db=world["settings"].db, ingest=world["settings"].ingest,
                        mqtt=MqttSettings(port=world["settings"].mqtt.port, client_id=f"test-ed-{tag}",
                                          session_expiry_s=20))
    word = (1 << 15) | (1 << 31)
    async with running_ingestor(settings, pool) as ing:
        with MqttPublisher(mqtt_params(settings, client_id=f"pub-ed-{tag}")) as pub:
            for edition, phone in phones.items():
                for k in range(12):
                    body = jt808.location_body(ts_ns=t0 + k * 10**10, lat=23.0 + k * 0.001, lon=116.5,
                                               speed_kmh=40, alarm_bits=word if k < 6 else 0)
                    pub.publish(f"wl/{region}/vehicle/{phone}/jt808",
                                jt808.encode(0x0200, phone, k, body, edition=edition))
            assert pub.wait_acked(10)
        await wait_until(lambda: ing.stats.messages >= 24, timeout=30, event=ing.committed)
        assert ing.stats.dead_letters == 0
    async with pool.acquire() as con:
        for edition, did in dids.items():
            got = await con.fetch("SELECT DISTINCT protocol_edition FROM vehicle_positions WHERE device = $1", did)
            assert [r["protocol_edition"] for r in got] == [int(edition)]
    job = VehicleJob(backfill_h=1, max_span_h=3)
    job.name = "vehicles_editions"
    await run_job_once(job, pool, world["end_ns"] + job.lag_ns)
    v13, v19 = await _violations(pool, dids["2013"]), await _violations(pool, dids["2019"])
    assert [(r["rule"], r["aux"], r["open"]) for r in v13] == [("terminal_alarm", 31, False)]
    assert [(r["rule"], r["aux"], r["open"]) for r in v19] == [("terminal_alarm", 15, False)]
    assert '"alarm": "illegal_door_open"' in v13[0]["details"] and '"edition": 2013' in v13[0]["details"]
    assert '"alarm": "violation_driving"' in v19[0]["details"] and '"edition": 2019' in v19[0]["details"]
    (door,) = await _alerts(pool, dids["2013"], 109)
    assert door["metric"] == "jt808.illegal_door_open" and "cleared after the platform answers" in door["title"]
    (viol,) = await _alerts(pool, dids["2019"], 109)
    assert viol["metric"] == "jt808.violation_driving" and "platform answers" not in viol["title"]


async def test_night_rules_by_vehicle_class_and_local_settings(world, pool):
    """A coach and a hazardous-goods truck drive 22:00-00:30 China time: the coach breaks the 2 h night
    limit, the truck is held to 4 h and breaks nothing, until a city's setting bans hazmat at night."""
    region, tag = world["region"], world["tag"]
    day = china_day(world["end_ns"]) - 3  # a China day well before the scenario
    t0_us = (day * 86400 + 14 * 3600) * 10**6  # 22:00 China = 14:00 UTC
    dids = {}
    async with pool.acquire() as con:
        for cls in ("coach_charter", "hazmat"):
            dids[cls] = await con.fetchval(
                "INSERT INTO devices (device_id, region, stream, attrs) VALUES ($1, $2, 'vehicle', $3::jsonb)"
                " RETURNING id", f"{tag}-N-{cls}", region, f'{{"vehicle_class": "{cls}"}}')
            await con.execute(  # 2 h 30 min at 60 km/h, then 30 min stopped; a point every 30 s
                "INSERT INTO vehicle_positions (time, device, lat, lon, speed_kmh)"
                " SELECT timestamptz 'epoch' + ($2::int8 + k * 30000000::int8) * interval '1 microsecond', $1,"
                "  22.0 + least(k, 300) * 0.0045, 115.0, CASE WHEN k < 300 THEN 60 ELSE 0 END"
                " FROM generate_series(0, 360) k", dids[cls], t0_us)
    now_ns = (t0_us + 4 * 3600 * 10**6) * 1000
    job = VehicleJob(backfill_h=6, max_span_h=12)
    job.name = "vehicles_night_scope"
    await run_job_once(job, pool, now_ns + job.lag_ns)
    assert [(r["rule"], r["open"]) for r in await _violations(pool, dids["coach_charter"])] == [("fatigue", False)]
    assert await _violations(pool, dids["hazmat"]) == []
    local = create_vehicle_job(Settings(energy=EnergySettings(backfill_h=6, max_span_h=12,
                                                              night_bans={"hazmat": "22:00-06:00"})))
    local.name = "vehicles_night_local"
    await run_job_once(local, pool, now_ns + local.lag_ns)
    # Still inside the ban window at the end of its data (parked): one episode per night, open.
    assert [(r["rule"], r["open"]) for r in await _violations(pool, dids["hazmat"])] == [("night_ban", True)]
    (ban,) = await _alerts(pool, dids["hazmat"], 110)
    assert ban["state"] == "active" and ban["title"].startswith("夜间禁行")
    with pytest.raises(ValueError, match="tractor"):
        create_vehicle_job(Settings(energy=EnergySettings(vehicle_rule_classes={"night_fatigue": ["tractor"]})))
