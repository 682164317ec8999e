"""Derived data of the shipped profiles (issue 19): cold-chain trip compliance, charger utilisation per
station and district, daily standard coal per enterprise and use above the enterprise's own hour-of-week
profile - the pure computations with hand-made inputs, then the derive jobs on simulated fleets written to
the database, their API endpoints and their dashboard panels (run as the read-only role)."""
from __future__ import annotations

import uuid
from datetime import date, datetime, timezone

import numpy as np
import orjson
import pytest

from wulian.core.profiles.baseline import baseline, high_hours, runs
from wulian.core.profiles.coldchain import trip_compliance, trip_spans
from wulian.core.profiles.held import held_seconds
from wulian.core.profiles.standard_coal import KGCE_PER_KWH_ELECTRICITY, CoalFactors
from wulian.core.profiles.system_rules import ENERGY_ANOMALY
from wulian.core.timebase import NS_PER_DAY, NS_PER_HOUR, NS_PER_MIN, NS_PER_S, date_day, day_start_ns
from wulian.ingest.jobs.charging import ChargingJob
from wulian.ingest.jobs.coldchain import ColdchainJob
from wulian.ingest.jobs.energy import EnergyJob
from wulian.simulators.profiles import build_profile_fleet

DAY = date(2026, 11, 20)  # a China day
D0 = day_start_ns(date_day(DAY))
NOW = D0 + NS_PER_DAY + 2 * NS_PER_HOUR


# -- pure computations -----------------------------------------------------------------------------------

def test_held_seconds_caps_a_silent_device():
    t = np.array([0, 60, 120, 3600]) * NS_PER_S
    # charging 0-60 s, idle 60-120 s, then charging held 900 s at most (offline after), idle from 3600 s
    secs = held_seconds(t, np.array([1, 0, 1, 0]), 0, 3700 * NS_PER_S, 900 * NS_PER_S, 4)
    assert secs.tolist() == [160.0, 960.0, 0.0, 0.0]


def test_trip_compliance_with_a_known_excursion():
    t = np.arange(0, 61) * NS_PER_MIN  # a reading a minute for an hour
    trip = np.where((t >= 10 * NS_PER_MIN) & (t < 60 * NS_PER_MIN), 1.0, 0.0)
    (start, stop, open_), = trip_spans(t, trip)
    assert (start, stop, open_) == (10 * NS_PER_MIN, 60 * NS_PER_MIN, False)
    temp = np.where((t >= 20 * NS_PER_MIN) & (t < 32 * NS_PER_MIN), 9.5, 5.0)  # 12 minutes above 8 °C
    temp[45] = np.nan  # a NaN reading is outside the band too (it is no evidence of being inside)
    tr = trip_compliance(start, stop, open_, t, temp, 2.0, 8.0, 300 * NS_PER_S)
    assert tr.duration_s == 3000 and tr.out_of_range_s == 13 * 60 and tr.no_data_s == 0
    assert tr.compliance == pytest.approx(37 / 50) and tr.max_temp == 9.5
    # a gap in the readings longer than max_hold counts as no data, not as compliant
    keep = (t < 30 * NS_PER_MIN) | (t >= 50 * NS_PER_MIN)
    tr = trip_compliance(start, stop, open_, t[keep], np.full(keep.sum(), 5.0), 2.0, 8.0, 300 * NS_PER_S)
    assert tr.no_data_s == 16 * 60 and tr.compliance == pytest.approx(34 / 50)  # minute 29 vouches to 34
    assert trip_spans(t[:30], trip[:30]) == [(10 * NS_PER_MIN, 29 * NS_PER_MIN, True)]  # still in transit


def test_standard_coal_of_one_day():
    # 10 000 kWh + 1 000 m³ gas + 10 t steam at 2 763 kJ/kg + 100 t new water
    q = {"electricity_kwh": 10_000.0, "gas_m3": 1_000.0, "steam_t": 10.0, "water_t": 100.0}
    kgce = 10_000 * 0.1229 + 1_000 * 1.2143 + 10_000 * 2763 / 29_307 + 100 * 0.0857
    assert CoalFactors().tce(q) == pytest.approx(kgce / 1000)
    assert CoalFactors.of({"gas_kgce_per_m3": 1.33}).gas_kgce_per_m3 == 1.33
    assert CoalFactors.of({"gas_kgce_per_m3": 5}).gas_kgce_per_m3 == 1.2143  # outside the annex's range
    assert KGCE_PER_KWH_ELECTRICITY == 0.1229


def test_hour_of_week_baseline_flags_a_run():
    history = np.array([[100.0, 100, 100, 100, 100], [102, 98, 101, 99, 100], [98, 103, 99, 100, 101],
                        [101, 100, 100, 97, 99]])
    med, mad = baseline(history)
    now = np.array([101.0, 150, 160, 155, 100])
    high = high_hours(now, med, mad, 4.0, 0.05)
    assert high.tolist() == [False, True, True, True, False]
    assert runs(high, 3) == [(1, 4)] and runs(high, 4) == []
    unknown = np.full((4, 1), np.nan)
    assert not high_hours(np.array([1e9]), *baseline(unknown), 4.0, 0.05).any()


# -- jobs, API, dashboards on simulated fleets ------------------------------------------------------------

async def _metric_ids(con, names) -> dict[str, int]:
    return {n: await con.fetchval("INSERT INTO metrics (name) VALUES ($1) ON CONFLICT (name) DO UPDATE"
                                  " SET name = EXCLUDED.name RETURNING id", n) for n in names}


async def _device(con, device_id: str, region: str, stream: str, attrs: dict) -> int:
    return await con.fetchval("INSERT INTO devices (device_id, region, stream, attrs) VALUES ($1, $2, $3, $4::jsonb)"
                              " RETURNING id", device_id, region, stream, orjson.dumps(attrs).decode())


async def _write(con, rows) -> None:
    await con.copy_records_to_table("readings", records=rows, columns=["time", "device", "metric", "value", "flag"])


def _dt(ns: int) -> datetime:
    return datetime.fromtimestamp(ns / 1e9, tz=timezone.utc)


async def _run_to_end(job, pool) -> None:
    job.name = f"{job.name}-{uuid.uuid4().hex[:6]}"  # a watermark of its own in the shared database
    for _ in range(6):
        stats = await job.run_once(pool, NOW)
        if stats.get("skipped"):
            return
    raise AssertionError("job did not catch up")


@pytest.fixture
async def fleets(pool):
    region = f"pj{uuid.uuid4().hex[:5]}"
    out = {"region": region}
    async with pool.acquire() as con:
        ids = await _metric_ids(con, ["trip", "temperature", "state", "electricity_kwh", "gas_m3", "steam_t", "water_t"])
        rows = []
        # cold chain: three hours, a reading a minute; trips from minute 10 to the hour
        trucks = build_profile_fleet("coldchain", n=2, seed=5)
        t0 = D0 + 8 * NS_PER_HOUR
        for dev in trucks:
            did = await _device(con, f"{region}-{dev.device_id}", region, "coldchain", {})
            out[dev.device_id] = did
            for k in range(181):
                ts = t0 + k * NS_PER_MIN
                v = dev.sample(ts)["values"]
                rows += [(_dt(ts), did, ids[m], v[m], "N") for m in ("trip", "temperature")]
        # charging: the whole China day, a status a minute; two chargers of one station
        for dev in build_profile_fleet("charging", n=2, seed=5):
            did = await _device(con, f"{region}-{dev.device_id}", region, "charging",
                                {"station": "东城充电站", "district": "东营区"})
            for k in range(1440):
                ts = D0 + k * NS_PER_MIN
                rows.append((_dt(ts), did, ids["state"], dev.sample(ts)["values"]["state"], "N"))
        # energy: one enterprise of two meters, registers every 10 minutes across the day
        meters = build_profile_fleet("energy", n=2, seed=5, faults=False)
        out["energy_base"] = [m.base for m in meters]
        for dev in meters:
            did = await _device(con, f"{region}-{dev.device_id}", region, "energy", {"enterprise": "胜利石化"})
            for k in range(145):  # 00:00 (closes the day before) to 24:00 (closes DAY)
                ts = D0 + k * 10 * NS_PER_MIN
                v = dev.sample(ts)["values"]
                rows += [(_dt(ts), did, ids[m], v[m], "N") for m in ("electricity_kwh", "gas_m3", "steam_t", "water_t")]
        # energy anomaly: hourly register for five weeks with a weekly shape; three hours tripled on DAY
        did = await _device(con, f"{region}-ANOM", region, "energy", {"enterprise": "异常厂"})
        out["anom_device"] = did
        reg, start = 0.0, D0 + NS_PER_DAY - 35 * NS_PER_DAY
        for h in range(35 * 24 + 1):
            ts = start + h * NS_PER_HOUR
            hour = (h - 1) % 24  # China hour the step ending at ts covers
            use = (300.0 if 8 <= hour < 18 else 100.0) + (h // 168) % 3
            if D0 + 10 * NS_PER_HOUR < ts <= D0 + 13 * NS_PER_HOUR:
                use *= 3
            reg += use
            rows.append((_dt(ts), did, ids["electricity_kwh"], reg, "N"))
        await _write(con, rows)
    return out


async def test_profile_jobs_compute_known_results_served_by_the_api(pool, fleets, api):
    from wulian.api.auth import create_key

    region = fleets["region"]
    for job in (ColdchainJob(), ChargingJob(), EnergyJob()):
        await _run_to_end(job, pool)
    async with pool.acquire() as con:
        key = await create_key(con, name="profile-jobs", role="regulator", regions=[region])
        trips = await con.fetch("SELECT device, compliance, out_of_range_s, max_temp, open FROM coldchain_trips"
                                " WHERE device = ANY($1::int[]) ORDER BY device, start_time",
                                [fleets["CC0001"], fleets["CC0002"]])
        anomalies = await con.fetch("SELECT start_time, end_time, hours, open FROM energy_anomalies WHERE region = $1",
                                    region)
        alerts = await con.fetch("SELECT state FROM alerts WHERE rule_id = $1 AND device = $2",
                                 ENERGY_ANOMALY.rule_id, fleets["anom_device"])
    # cold chain: the faulty truck is above 8 °C for 25 of each trip's 50 minutes; the healthy one never
    faulty = [r for r in trips if r["device"] == fleets["CC0001"]]
    healthy = [r for r in trips if r["device"] == fleets["CC0002"]]
    assert len(faulty) == len(healthy) == 3 and not any(r["open"] for r in trips)
    assert all(r["compliance"] == pytest.approx(0.5) and r["out_of_range_s"] == 1500 and r["max_temp"] == 11
               for r in faulty)
    assert all(r["compliance"] == 1.0 for r in healthy)
    # energy: the anomaly run is the three tripled hours, closed, and raised (then cleared) an alert
    assert [(r["start_time"], r["end_time"], r["hours"], r["open"]) for r in anomalies] == [
        (_dt(D0 + 10 * NS_PER_HOUR), _dt(D0 + 13 * NS_PER_HOUR), 3, False)]
    assert [r["state"] for r in alerts] == ["cleared"]

    h = {"Authorization": f"Bearer {key}"}
    r = await api.get("/v1/coldchain/trips", params={"device": f"{region}-CC0001"}, headers=h)
    assert r.status_code == 200, r.text
    assert [(t["compliance_pct"], t["minutes_out_of_range"], t["duration_min"]) for t in r.json()["data"]] == [
        (50.0, 25.0, 50.0)] * 3
    r = await api.get("/v1/charging/utilisation", params={"by": "station", "region": region, "from": str(DAY),
                                                          "to": str(DAY)}, headers=h)
    assert r.status_code == 200, r.text
    (row,) = r.json()["data"]
    # faulty charger: charging 20 of every 60 minutes (its fault takes 10 of its 30); healthy: 30 of 60
    assert (row["key"], row["district"], row["chargers"]) == ("东城充电站", "东营区", 2)
    assert row["utilisation"] == pytest.approx((20 / 60 + 30 / 60) / 2) and row["fault_h"] == pytest.approx(4.0)
    assert row["offline_h"] == 0.0
    r = await api.get("/v1/charging/utilisation", params={"by": "charger", "region": region, "from": str(DAY),
                                                          "to": str(DAY)}, headers=h)
    assert sorted(round(x["utilisation"], 4) for x in r.json()["data"]) == [0.3333, 0.5]
    r = await api.get("/v1/energy/daily", params={"region": region, "enterprise": "胜利石化", "from": str(DAY),
                                                  "to": str(DAY)}, headers=h)
    assert r.status_code == 200, r.text
    (day,) = r.json()["data"]
    base = fleets["energy_base"]
    q = {"electricity_kwh": sum(b["kw"] for b in base) * 24, "gas_m3": sum(b["gas"] for b in base) * 24,
         "steam_t": sum(b["steam"] for b in base) * 24, "water_t": sum(b["water"] for b in base) * 24}
    for c, v in q.items():
        assert day[c] == pytest.approx(v, abs=1e-2), c
    assert day["meters"] == 2 and day["tce"] == pytest.approx(CoalFactors().tce(q), rel=1e-6)
    r = await api.get("/v1/energy/anomalies", params={"region": region}, headers=h)
    assert [(a["enterprise"], a["hours"]) for a in r.json()["data"]] == [("异常厂", 3)]


async def test_profile_dashboards_show_the_derived_tables(pool, fleets):
    from wulian.dashboards.build import READONLY_ROLE
    from wulian.dashboards.profiles import DERIVED_PANELS
    from wulian.dashboards.render import render
    from wulian.dashboards.streams import profile_defs, stream_dashboards
    from wulian.dashboards.verify import TimeRange, verify

    for job in (ColdchainJob(), ChargingJob(), EnergyJob()):
        await _run_to_end(job, pool)
    docs = [render(d) for d in stream_dashboards(profile_defs())]
    rng = TimeRange(_dt(D0), _dt(D0 + NS_PER_DAY - 1))
    async with pool.acquire() as con:
        report = await verify(con, docs, rng, chosen={"region": [fleets["region"]]}, role=READONLY_ROLE)
    failed = [(r.dashboard, r.title, r.error) for r in report.results if r.status == "failed"]
    assert not failed, failed
    derived = {p.title for panels in DERIVED_PANELS.values() for p in panels}
    rows = {r.title: r.rows for r in report.results if r.title in derived}
    assert set(rows) == derived and all(rows.values()), rows
