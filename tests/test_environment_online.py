"""Environment online: a simulated day through MQTT and ingest, the derive jobs once, derived rows,
alerts, the API with region scope, and idempotent re-runs. Plus the pure helpers of the jobs."""
import time
import uuid
from datetime import datetime, timezone

import numpy as np
import pytest

from wulian.api.auth import create_key
from wulian.core.timebase import NS_PER_DAY, NS_PER_HOUR, NS_PER_MIN, china_day_start_ns
from wulian.core.environment.episodes import Episode
from wulian.core.environment.metric_names import AVG, SAMPLE, air_metric, source_metric, water_metric
from wulian.core.environment.online import episode_actions, plan_window, split_avg
from wulian.core.environment.system_rules import (
    BOUNDARY_EXCEEDANCE,
    HEAVY_POLLUTION,
    LOW_VALID_RATE,
    POLLUTION_PULSE,
    SOURCE_EXCEEDANCE,
    SYSTEM_RULES,
    WATER_BELOW_TARGET,
)
from wulian.ingest.derive_service import discover, run_job_once
from wulian.ingest.mqtt_client import MqttPublisher
from wulian.ingest.service import mqtt_params, running_ingestor
from wulian.simulators.environment import Scenario, env_fleet, publish_records, register_devices, scenario_records
from tests.conftest import wait_until

JOBS = ("source_hourly", "air_quality", "water_quality")
H = NS_PER_HOUR


# --- pure helpers ----------------------------------------------------------------------------------

def test_metric_names_map_json_and_hj212():
    assert air_metric("PM25") == ("PM2.5", SAMPLE, 1.0)
    assert air_metric("a34004-Avg") == ("PM2.5", AVG, 1.0)
    assert air_metric("a21026-Max") is None
    assert water_metric("w21003-Rtd").name == "NH3_N"
    assert water_metric("w20111-Avg") == ("Hg", AVG, 1e-3)  # µg/L -> mg/L
    assert water_metric("temp") is None
    assert source_metric("a34013-Rtd").name == "PM"
    assert source_metric("a21026-ZsRtd") is None
    assert source_metric("flow", "gas").factor == pytest.approx(1 / 3600)
    assert source_metric("flow", "water").factor == pytest.approx(1 / 3.6)
    assert len({r.rule_id for r in SYSTEM_RULES}) == len(SYSTEM_RULES) == 6


def test_split_avg_tells_hourly_uploads_from_minute_data():
    t0 = 1_800_000_000 * 10**9 // H * H
    # key 0: one Avg on the hour -> hourly upload; key 1: six 10-minute Avgs -> minute data;
    # key 2: one Avg at :10 -> minute data; key 3: has real-time samples, so its minute Avgs are dropped
    keys = np.array([0, 1, 1, 1, 1, 1, 1, 2, 3, 3, 3])
    ts = np.array([t0, t0, t0 + 10 * NS_PER_MIN, t0 + 20 * NS_PER_MIN, t0 + 30 * NS_PER_MIN, t0 + 40 * NS_PER_MIN,
                   t0 + 50 * NS_PER_MIN, t0 + 10 * NS_PER_MIN, t0, t0 + 10 * NS_PER_MIN, t0 + 60 * NS_PER_MIN])
    is_avg = np.array([True] * 8 + [False, True, True])
    has_sample = np.array([False, False, False, True])
    minute, hourly = split_avg(keys, ts, is_avg, has_sample, t0, 4, 2)
    assert hourly.tolist() == [True] + [False] * 9 + [True]  # key 3's lone Avg on the next hour is an upload
    assert minute.tolist() == [False] + [True] * 7 + [False, False, False]


def _ep(start_h, end_h, t0, peak=1.0):
    return Episode("r", "s", "i", t0 + start_h * H, t0 + end_h * H, peak, t0 + start_h * H, end_h - start_h, 0.5)


def test_episode_actions_over_consecutive_runs():
    t0 = 0
    # run 1 covers hours [0, 10): an episode 2-4 (closed) and one 8-10 (reaches the end of the data)
    acts = episode_actions([_ep(2, 4, t0), _ep(8, 10, t0)], 0, 10 * H, H)
    assert [(a.kind, a.ts_ns // H) for a in acts] == [("raise", 2), ("clear", 4), ("raise", 8)]
    # run 2 covers [10, 20) with look-back: the old episode is left alone, the open one goes on and ends
    acts = episode_actions([_ep(2, 4, t0), _ep(8, 13, t0)], 10 * H, 20 * H, H)
    assert [(a.kind, a.ts_ns // H) for a in acts] == [("raise", 8), ("clear", 13)]
    # an episode that ended exactly where the new run starts is cleared, not raised again
    acts = episode_actions([_ep(8, 10, t0)], 10 * H, 20 * H, H)
    assert [(a.kind, a.ts_ns // H) for a in acts] == [("clear", 10)]
    # min_periods: raised when confirmed
    acts = episode_actions([_ep(3, 9, t0)], 0, 20 * H, H, min_periods=4)
    assert [(a.kind, a.ts_ns // H) for a in acts] == [("raise", 6), ("clear", 9)]


def test_plan_window():
    now = china_day_start_ns(1_800_000_000 * 10**9) + 10 * H + 20 * NS_PER_MIN
    w = plan_window(None, now, lag_s=900, backfill_h=48, max_span_h=168, lookback_h=24)
    assert w.end_ns == now - 20 * NS_PER_MIN and w.n_hours % 24 == 0
    assert w.new_from_ns == china_day_start_ns(w.end_ns - 48 * H) and w.t0_ns < w.new_from_ns
    assert plan_window(w.end_ns, now, lag_s=900, backfill_h=48, max_span_h=168, lookback_h=1) is None
    assert len(w.completed_days()) == 2
    # a run that completes a day reads all of it; one within a day only its look-back
    day = china_day_start_ns(w.end_ns)
    w4 = plan_window(day - 4 * H, day + 3 * H + 20 * NS_PER_MIN, lag_s=900, backfill_h=48, max_span_h=168,
                     lookback_h=1)
    assert w4.load_from_ns(1) == day - 24 * H
    w3 = plan_window(w.end_ns - 3 * H, now, lag_s=900, backfill_h=48, max_span_h=168, lookback_h=1)
    assert w3.completed_days() == [] and w3.load_from_ns(1) == w3.new_from_ns - H
    w2 = plan_window(w.end_ns - 100 * H, now, lag_s=900, backfill_h=48, max_span_h=24, lookback_h=1)
    assert w2.end_ns - w2.new_from_ns == 24 * H


# --- end to end -------------------------------------------------------------------------------------

def h(key):
    return {"Authorization": f"Bearer {key}"}


async def _counts(con) -> dict:
    out = {}
    for t in ("env_source_hourly", "env_source_daily", "env_completeness_daily", "env_exceedances", "env_aqi_hourly",
              "env_aqi_daily", "env_city_aqi", "env_water_hourly", "env_water_daily", "env_pulse_events"):
        out[t] = await con.fetchval(f"SELECT count(*) FROM {t}")
    out["alerts"] = await con.fetchval("SELECT count(*) FROM alerts WHERE rule_id >= 1000000000")
    out["alert_events"] = await con.fetchval("SELECT count(*) FROM alert_events")
    return out


async def test_simulated_day_through_ingest_jobs_and_api(settings, pool, api):
    region = f"e{uuid.uuid4().hex[:6]}"
    tag = uuid.uuid4().hex[:5]
    fleet = env_fleet(tag)
    ids = {d.device_id.split("-")[-1]: d.device_id for d in fleet}  # STACK1, WW1, PLANT1, 1..3, 01..04
    day0 = china_day_start_ns(time.time_ns()) - NS_PER_DAY  # yesterday, China time: a whole day in the past
    sc = Scenario(start_ns=day0, hours=24)
    records = scenario_records(fleet, sc)
    async with pool.acquire() as con:
        await register_devices(con, region, fleet)
        await con.execute("DELETE FROM job_watermarks WHERE job = ANY($1)", list(JOBS))
        keys = {"reg": await create_key(con, name="env-reg", role="regulator", regions=[region]),
                "other": await create_key(con, name="env-other", role="regulator", regions=["elsewhere"])}
    async with running_ingestor(settings, pool) as ing:
        with MqttPublisher(mqtt_params(settings, client_id=f"envpub-{tag}"), max_inflight=2000) as pub:
            sent = publish_records(pub, region, fleet, records, settings.mqtt.topic_prefix)
            assert pub.wait_acked(60)
        await wait_until(lambda: ing.stats.messages >= sent, timeout=90, event=ing.committed)

    jobs = [j for j in discover(settings) if j.name in JOBS]
    assert sorted(j.name for j in jobs) == sorted(JOBS)
    t = lambda hh: datetime.fromtimestamp((day0 + hh * H) / 1e9, timezone.utc)  # noqa: E731
    # first run in the middle of the SO2 episode (hours 8-11): it is open, its alert active
    mid = day0 + 10 * H + 20 * NS_PER_MIN
    stats = {j.name: await run_job_once(j, pool, mid) for j in jobs}
    assert all(s.get("hourly_rows", 0) > 0 for s in stats.values()), stats
    async with pool.acquire() as con:
        stack = await con.fetchval("SELECT id FROM devices WHERE device_id = $1", ids["STACK1"])
        ep = await con.fetchrow("SELECT * FROM env_exceedances WHERE device = $1", stack)
        assert (ep["start_time"], ep["end_time"], ep["open"]) == (t(8), t(10), True)
        state = await con.fetchval("SELECT state FROM alerts WHERE rule_id = $1 AND device = $2",
                                   SOURCE_EXCEEDANCE.rule_id, stack)
        assert state == "active"
    # the rest of the day: the same episode goes on and ends
    now = day0 + NS_PER_DAY + 20 * NS_PER_MIN
    stats = {j.name: await run_job_once(j, pool, now) for j in jobs}
    assert all(s.get("hourly_rows", 0) > 0 for s in stats.values()), stats

    async with pool.acquire() as con:
        dev = {k: await con.fetchval("SELECT id FROM devices WHERE device_id = $1", v) for k, v in ids.items()}
        n = await con.fetchval("SELECT count(*) FROM alerts WHERE rule_id = $1 AND device = $2",
                               SOURCE_EXCEEDANCE.rule_id, stack)
        assert n == 1
        # --- sources: validity, O2 conversion, mass, exceedance episode
        so2 = await con.fetch("SELECT * FROM env_source_hourly WHERE device = $1 AND pollutant = 'SO2' ORDER BY time",
                              dev["STACK1"])
        assert len(so2) == 24
        maint = so2[sc.maintenance_hour]
        assert (maint["valid_minutes"], maint["minutes"], maint["valid"], maint["exceeded"]) == (44, 60, False, False)
        normal = so2[0]
        assert normal["valid"] and normal["valid_minutes"] == 60 and normal["reference_o2"] == 9.0
        o2 = await con.fetchval("SELECT measured FROM env_source_hourly WHERE device = $1 AND pollutant = 'O2'"
                                " AND time = $2", dev["STACK1"], normal["time"])
        assert normal["converted"] == pytest.approx(normal["measured"] * (21 - 9) / (21 - o2))
        assert normal["mass_kg"] == pytest.approx(20.0 * 120000 / 1e6, rel=0.1)  # mg/m3 x m3/h -> kg
        assert [r["time"] for r in so2 if r["exceeded"]] == [t(8), t(9), t(10)]
        ww = await con.fetchval("SELECT avg(mass_kg) FROM env_source_hourly WHERE device = $1 AND pollutant = 'COD'",
                                dev["WW1"])
        assert ww == pytest.approx(30.0 * 200 / 1000, rel=0.1)  # mg/L x m3/h -> kg/h
        (ep,) = await con.fetch("SELECT * FROM env_exceedances WHERE device = $1", dev["STACK1"])
        assert (ep["pollutant"], ep["start_time"], ep["end_time"], ep["hours"], ep["open"]) == ("SO2", t(8), t(11), 3, False)
        assert ep["peak"] > 60 * 12 / 11 * 0.9 and "9 % O2" in ep["basis"]
        daily = await con.fetchrow("SELECT * FROM env_source_daily WHERE device = $1 AND pollutant = 'SO2'", dev["STACK1"])
        assert (daily["time"], daily["valid_hours"], daily["valid"]) == (t(0), 23, True)
        rates = dict(await con.fetch("SELECT device, valid_rate FROM env_completeness_daily WHERE device = ANY($1)",
                                     list(dev.values())))
        assert rates[dev["STACK1"]] == pytest.approx(23 / 24) and rates[dev["PLANT1"]] == pytest.approx(20 / 24)
        # --- air: AQI per edition in force, primary pollutant, daily and city
        aqi = await con.fetch("SELECT * FROM env_aqi_hourly WHERE device = $1 ORDER BY time", dev["1"])
        assert len(aqi) == 24 and {r["edition"] for r in aqi} == {"HJ633-2026"}
        a0, aqi_ep = aqi[0], aqi[sc.aqi_episode[0] + 1]
        assert 50 < a0["aqi"] <= 100 and a0["category"] == "良"
        assert aqi_ep["aqi"] >= 201 and aqi_ep["primary_pollutants"] == ["PM2.5"] and aqi_ep["color"] == "#99004C"
        assert await con.fetchval("SELECT count(*) FROM env_aqi_daily WHERE device = ANY($1)", list(dev.values())) == 3
        assert await con.fetchval("SELECT count(*) FROM env_city_aqi WHERE city = $1 AND report = 'hourly'", region) == 24
        # --- water: classes, target, pulse
        w4 = await con.fetch("SELECT * FROM env_water_hourly WHERE device = $1 ORDER BY time", dev["04"])
        assert len(w4) == 24 and w4[0]["overall_class"] == "IV" and not w4[0]["compliant"] and w4[0]["target"] == 3
        w1 = await con.fetchrow("SELECT * FROM env_water_hourly WHERE device = $1 ORDER BY time LIMIT 1", dev["01"])
        assert w1["overall_class"] == "II" and w1["compliant"]
        assert await con.fetchval("SELECT count(*) FROM env_water_daily WHERE device = ANY($1)", list(dev.values())) == 4
        pulses = await con.fetch("SELECT * FROM env_pulse_events WHERE device = ANY($1) AND item = 'NH3_N'",
                                 list(dev.values()))
        assert len(pulses) == 1, [dict(p) for p in pulses]
        pulse = pulses[0]
        assert (pulse["entry_upstream"], pulse["entry_downstream"]) == (ids["02"], ids["03"])
        assert pulse["device"] == dev["04"] and pulse["confidence"] > 0.5
        assert pulse["entry_km_from"] <= sc.pulse_km <= pulse["entry_km_to"]
        # --- alerts
        alerts = {(r["rule_id"], r["device_id"], r["metric"]): r for r in await con.fetch(
            "SELECT * FROM alerts WHERE region = $1 AND rule_id >= 1000000000", region)}
        assert alerts[(SOURCE_EXCEEDANCE.rule_id, ids["STACK1"], "SO2")]["state"] == "cleared"
        assert alerts[(LOW_VALID_RATE.rule_id, ids["PLANT1"], "")]["state"] == "active"
        assert (LOW_VALID_RATE.rule_id, ids["STACK1"], "") not in alerts
        for k in ("1", "2", "3"):
            assert alerts[(HEAVY_POLLUTION.rule_id, ids[k], "AQI")]["state"] == "cleared"
        assert alerts[(WATER_BELOW_TARGET.rule_id, ids["04"], "")]["state"] == "active"
        assert alerts[(POLLUTION_PULSE.rule_id, ids["04"], "NH3_N")]["severity"] == "critical"
        assert alerts[(BOUNDARY_EXCEEDANCE.rule_id, ids["PLANT1"], "benzene")]["state"] == "cleared"
        bz = await con.fetchrow("SELECT * FROM env_exceedances WHERE device = $1", dev["PLANT1"])
        assert (bz["rule"], bz["start_time"], bz["hours"], bz["limit_value"]) == ("boundary_exceedance", t(20), 1, 0.4)
        before = await _counts(con)

    # --- idempotency: a second run has nothing due; a re-run from scratch writes no duplicates
    again = {j.name: await run_job_once(j, pool, now) for j in jobs}
    assert all(s == {"due": False} for s in again.values())
    async with pool.acquire() as con:
        await con.execute("DELETE FROM job_watermarks WHERE job = ANY($1)", list(JOBS))
    for j in jobs:
        await run_job_once(j, pool, now)
    async with pool.acquire() as con:
        assert await _counts(con) == before

    # --- API, region scope
    st1 = ids["1"]
    q = {"station": st1, "from": t(0).isoformat(), "to": t(24).isoformat()}
    r = await api.get("/v1/air/aqi", params=q, headers=h(keys["reg"]))
    assert r.status_code == 200 and r.json()["count"] == 24 and r.json()["data"][0]["edition"] == "HJ633-2026"
    r = await api.get("/v1/air/aqi", params={**q, "report": "daily"}, headers=h(keys["reg"]))
    assert r.json()["count"] == 1 and r.json()["data"][0]["report"] == "daily"
    r = await api.get("/v1/air/aqi", params={"city": region, "from": q["from"], "to": q["to"]}, headers=h(keys["reg"]))
    assert r.json()["count"] == 24 and r.json()["data"][0]["stations"] == 3
    r = await api.get("/v1/air/aqi/latest", params={"region": region}, headers=h(keys["reg"]))
    assert [x["station"] for x in r.json()["data"]] == [ids["1"], ids["2"], ids["3"]]
    r = await api.get(f"/v1/sources/{ids['STACK1']}/hourly", params={"from": q["from"], "to": q["to"], "pollutant": "SO2"},
                      headers=h(keys["reg"]))
    assert r.status_code == 200 and sum(x["exceeded"] for x in r.json()["data"]) == 3
    r = await api.get("/v1/sources/exceedances", params={"region": region}, headers=h(keys["reg"]))
    assert [(x["device_id"], x["pollutant"]) for x in r.json()["data"]] == [(ids["PLANT1"], "benzene"),
                                                                          (ids["STACK1"], "SO2")]
    r = await api.get("/v1/water/stations", params={"region": region}, headers=h(keys["reg"]))
    body = r.json()["data"]
    assert [x["device_id"] for x in body] == [ids["01"], ids["02"], ids["03"], ids["04"]]
    assert body[3]["current"]["overall_class"] == "IV" and body[3]["target_class"] == "III"
    assert body[3]["current"]["compliant"] is False and body[0]["compliance_7d"] == 1.0
    assert body[3]["today"]["overall_class"] == "IV"
    r = await api.get("/v1/water/events", params={"region": region}, headers=h(keys["reg"]))
    assert r.json()["count"] == 1 and r.json()["data"][0]["entry_downstream"] == ids["03"]
    # another region sees none of it
    assert (await api.get("/v1/air/aqi", params=q, headers=h(keys["other"]))).status_code == 404
    assert (await api.get(f"/v1/sources/{ids['STACK1']}/hourly", params={"from": q["from"], "to": q["to"]},
                          headers=h(keys["other"]))).status_code == 404
    for path in ("/v1/air/aqi/latest", "/v1/sources/exceedances", "/v1/water/stations", "/v1/water/events"):
        r = await api.get(path, params={"region": region}, headers=h(keys["other"]))
        assert r.status_code == 200 and r.json()["count"] == 0, path
    # bad queries
    r = await api.get("/v1/air/aqi", params={**q, "to": q["from"]}, headers=h(keys["reg"]))
    assert r.status_code == 422 and "after" in r.json()["message"]
    r = await api.get("/v1/air/aqi", params={**q, "city": region}, headers=h(keys["reg"]))
    assert r.status_code == 422 and "exactly one" in r.json()["message"]
    r = await api.get("/v1/air/aqi", params={**q, "station": ids["STACK1"]}, headers=h(keys["reg"]))
    assert r.status_code == 422
    assert (await api.get("/v1/air/aqi", params={**q, "report": "weekly"}, headers=h(keys["reg"]))).status_code == 422
    assert (await api.get("/v1/water/stations")).status_code == 401


async def test_hj212_source_with_uploaded_hourly_values(settings, pool):
    """An HJ 212 stack: real-time minutes (CN 2011) and its own hourly values (CN 2061), which are
    compared with ours where both exist and taken as they come where ours are not valid."""
    from wulian.ingest.codecs.hj212 import encode_data

    region = f"h{uuid.uuid4().hex[:6]}"
    mn = f"88888880{uuid.uuid4().hex[:8].upper()}"
    day0 = china_day_start_ns(time.time_ns()) - NS_PER_DAY
    async with pool.acquire() as con:
        await con.execute(
            "INSERT INTO devices (device_id, region, stream, attrs) VALUES ($1, $2, 'pollution', $3::jsonb)", mn, region,
            '{"source_kind": "stack", "source_type": "gas_turbine", "limits": {"SO2": 35}}')
        await con.execute("DELETE FROM job_watermarks WHERE job = 'source_hourly'")
    packets = []
    for m in range(3 * 60):
        flag = "M" if 120 <= m < 150 else "N"  # hour 2: 30 maintenance minutes -> not a valid hour of ours
        packets.append(encode_data(mn=mn, data_time_ns=day0 + m * NS_PER_MIN, cn="2011", values={
            "a21026": {"Rtd": 20.0, "Flag": flag}, "a19001": {"Rtd": 18.0, "Flag": flag}}))
    # CN 2061: hour 0 agrees, hour 1 is 20 % off, hour 2 stands in for ours, hour 3 has nothing else
    for hh, v in enumerate((20.0, 24.0, 21.0, 22.0)):
        packets.append(encode_data(mn=mn, data_time_ns=day0 + hh * H, cn="2061", values={
            "a21026": {"Avg": v, "Flag": "N"}, "a19001": {"Avg": 18.0, "Flag": "N"}}))
    async with running_ingestor(settings, pool) as ing:
        with MqttPublisher(mqtt_params(settings, client_id=f"hjpub-{mn[-6:]}"), max_inflight=2000) as pub:
            for pkt in packets:
                pub.publish(f"wl/{region}/pollution/{mn}/hj212", pkt)
            assert pub.wait_acked(30)
        await wait_until(lambda: ing.stats.messages >= len(packets), timeout=60, event=ing.committed)
    job = next(j for j in discover(settings) if j.name == "source_hourly")
    await run_job_once(job, pool, day0 + 5 * H)
    async with pool.acquire() as con:
        rows = await con.fetch(
            "SELECT h.* FROM env_source_hourly h JOIN devices d ON d.id = h.device WHERE d.device_id = $1"
            " AND pollutant = 'SO2' ORDER BY time", mn)
    assert len(rows) == 4
    r0, r1, r2, r3 = rows
    assert (r0["valid_minutes"], r0["uploaded"], r0["uploaded_mismatch"]) == (60, 20.0, False)
    assert (r1["uploaded"], r1["uploaded_mismatch"], r1["measured"]) == (24.0, True, 20.0)  # ours kept
    assert r2["valid_minutes"] == 30 and r2["valid"] and r2["measured"] == 21.0 and "CN2061" in r2["rule"]
    assert r3["minutes"] == 0 and r3["measured"] == 22.0 and r3["valid"]
    # gas turbine: reference O2 15 %, measured 18 % -> x (21 - 15) / (21 - 18) = 2
    assert r0["reference_o2"] == 15.0 and r0["converted"] == pytest.approx(40.0) and r0["exceeded"]
    assert r0["limit_value"] == 35.0
