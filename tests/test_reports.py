"""Issue 18: regulators' reports (each figure against a hand computation on simulated daily data), CSV
export, alert statistics, the audit log, API keys, dead letters and their replay, and one paging style
on every list route."""
import csv
import io
import json
import random
import statistics
import uuid
from datetime import date, datetime, timedelta, timezone

import asyncpg
import httpx
import orjson
import pytest

from wulian.api.app import create_app
from wulian.api.auth import create_key
from wulian.core.environment.tables import WATER_CLASSES
from wulian.core.timebase import CHINA_TZ
from wulian.ingest.audit import device_change
from wulian.ingest.device_store import DeviceSpec
from wulian.ingest.provisioning import provision_device

FIRST, LAST = date(2026, 10, 1), date(2026, 11, 30)  # two China months
DAYS = [FIRST + timedelta(days=k) for k in range((LAST - FIRST).days + 1)]


def h(key):
    return {"Authorization": f"Bearer {key}"}


def _midnight(d: date) -> datetime:
    return datetime(d.year, d.month, d.day, tzinfo=CHINA_TZ)


def _month(d: date) -> str:
    return d.replace(day=1).isoformat()


@pytest.fixture
async def api(settings):
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api") as c:
            yield c


@pytest.fixture
async def keys(pool):
    region = f"rp{uuid.uuid4().hex[:6]}"
    async with pool.acquire() as con:
        return {
            "region": region,
            "admin": await create_key(con, name="rep-admin", role="admin", regions=[]),
            "operator": await create_key(con, name="rep-op", role="operator", regions=[region]),
            "regulator": await create_key(con, name="rep-reg", role="regulator", regions=[region]),
            "other": await create_key(con, name="rep-other", role="regulator", regions=["elsewhere"]),
        }


async def _device(con, device_id, region, stream, attrs=None, name=None) -> int:
    return await con.fetchval(
        "INSERT INTO devices (device_id, region, stream, name, attrs) VALUES ($1, $2, $3, $4, $5::jsonb) RETURNING id",
        device_id, region, stream, name, json.dumps(attrs or {}))


@pytest.fixture
async def city(pool, keys):
    """Two months of simulated daily results, as the derive jobs write them, in one region; returns
    the raw values for the hand computations."""
    region = keys["region"]
    rnd = random.Random(18)
    sim: dict = {"region": region}
    tag = region.upper()
    async with pool.acquire() as con:
        src = [await _device(con, f"PS-{tag}-{k}", region, "pollution", name=f"排口{k}") for k in (1, 2)]
        sim["source"] = rows = []
        for k, dev in enumerate(src):
            for d in DAYS:
                for p in ("SO2", "NOx"):
                    vh = rnd.choice([24, 23, 19, 24, 12])
                    mean = round(rnd.uniform(10, 40), 3)
                    mass = round(rnd.uniform(1, 9), 3)
                    rows.append((d, f"PS-{tag}-{k + 1}", p, mean, vh, vh >= 20, mass))
                    await con.execute("INSERT INTO env_source_daily (time, device, pollutant, mean, valid_hours, valid,"
                                      " mass_kg, mass_hours, rule) VALUES ($1, $2, $3, $4, $5, $6, $7, 24, 'HJ75')",
                                      _midnight(d), dev, p, mean, vh, vh >= 20, mass)
                rate = round(rnd.uniform(0.5, 1.0), 4)
                sim.setdefault("validity", []).append((d, f"PS-{tag}-{k + 1}", rate, rate - 0.1))
                await con.execute("INSERT INTO env_completeness_daily (time, device, valid_rate, items, min_rate)"
                                  " VALUES ($1, $2, $3, 2, $4)", _midnight(d), dev, rate, rate - 0.1)
        water = []
        river = f"river-{tag}"  # its own river: the water job of other tests must not see these stations
        for k, section in enumerate(("上游", "上游", "下游")):
            dev = await _device(con, f"LJ-{tag}-{k}", region, "water",
                                {"river": river, "section": section, "target_class": "III", "km": 10 * k})
            for d in DAYS:
                overall = rnd.choice([2, 3, 3, 4, 5])
                water.append((d, f"LJ-{tag}-{k}", section, overall, overall <= 3))
                await con.execute(
                    "INSERT INTO env_water_daily (time, device, standard, overall, overall_class, item_class, means,"
                    " target, compliant) VALUES ($1, $2, 'GB3838-2002', $3, $4, '{}', '{}', 3, $5)",
                    _midnight(d), dev, overall, WATER_CLASSES[overall - 1], overall <= 3)
        sim["water"] = water
        vehicles = {e: [await _device(con, f"VH-{tag}-{e[:1]}{n}", region, "vehicle", {"enterprise": e})
                        for n in range(3)] for e in ("危运A", "客运B")}
        kpis, viol = [], []
        for e, devs in vehicles.items():
            for d in DAYS:
                row = (d, e, rnd.choice([3, 3, 2]), round(rnd.uniform(0.6, 1), 4), round(rnd.uniform(0.8, 1), 4),
                       round(rnd.uniform(0.9, 1), 4))
                kpis.append(row)
                await con.execute(
                    "INSERT INTO vehicle_kpis (day, region, scope, grp, registered, networked, online, online_rate,"
                    " track_completeness, valid_rate) VALUES ($1, $2, 'enterprise', $3, $4, $4, 1, $5, $6, $7)",
                    d, region, e, row[2], row[3], row[4], row[5])
                for dev in devs:
                    if rnd.random() < 0.15:
                        start = _midnight(d) + timedelta(hours=rnd.choice([0, 8, 23]), minutes=30)
                        viol.append((d, e))
                        await con.execute("INSERT INTO vehicle_violations (device, rule, start_time, end_time)"
                                          " VALUES ($1, 'overspeed', $2, $3)", dev, start, start + timedelta(minutes=5))
        sim["kpis"], sim["violations"] = kpis, viol
        grid = []
        for k, feeder in enumerate(("F1", "F1", "F2")):
            dev = await _device(con, f"GM-{tag}-{k}", region, "grid", {"feeder": feeder})
            for d in DAYS:
                samples, rate = rnd.choice([1440, 1200, 0]), round(rnd.uniform(0.9, 1), 4)
                grid.append((d, feeder, samples, rate if samples else None))
                await con.execute("INSERT INTO grid_quality_daily (device, day, samples, interruptions, voltage_rate)"
                                  " VALUES ($1, $2, $3, 0, $4)", dev, d, samples, rate if samples else None)
        sim["grid"] = grid
        meters = []
        for c in ("C1", "C2"):
            for d in DAYS:
                expected = 96 * rnd.choice([10, 12])
                received = expected - rnd.randint(0, 40)
                meters.append((d, expected, received))
                await con.execute("INSERT INTO meter_collection_daily (region, concentrator, day, meters, expected,"
                                  " received, success_rate) VALUES ($1, $2, $3, 12, $4, $5, $6)",
                                  region, c, d, expected, received, received / expected)
        sim["meters"] = meters
    return sim


async def _report(api, key, path, **params):
    r = await api.get(f"/v1/reports/{path}", params={"from": FIRST.isoformat(), "to": LAST.isoformat(), **params},
                      headers=h(key))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["count"] == len(body["data"]) and body["next_cursor"] is None
    return body["data"]


async def test_emissions_report_daily_and_monthly(api, keys, city):
    rows = city["source"]
    monthly = await _report(api, keys["regulator"], "emissions", period="monthly")
    got = {(r["month"], r["source"], r["pollutant"]): r for r in monthly}
    assert len(got) == 2 * 2 * 2
    for (month, source, p), r in got.items():
        mine = [x for x in rows if _month(x[0]) == month and x[1] == source and x[2] == p]
        valid = [x for x in mine if x[5]]
        assert r["days"] == len(mine) and r["valid_days"] == len(valid)
        assert r["mass_kg"] == pytest.approx(sum(x[6] for x in mine))
        assert r["mean_value"] == pytest.approx(statistics.fmean(x[3] for x in valid))
        assert r["valid_hours"] == sum(x[4] for x in mine)
    daily = await _report(api, keys["regulator"], "emissions", period="daily", limit=10000)
    assert len(daily) == len(rows)
    d0 = next(r for r in daily if r["day"] == "2026-10-01" and r["source"].endswith("-1") and r["pollutant"] == "SO2")
    x = rows[0]
    assert (d0["mass_kg"], d0["valid_days"]) == (pytest.approx(x[6]), int(x[5]))
    assert d0["mean_value"] == (pytest.approx(x[3]) if x[5] else None)


async def test_data_validity_report(api, keys, city):
    monthly = await _report(api, keys["regulator"], "data-validity", period="monthly")
    assert len(monthly) == 4
    for r in monthly:
        mine = [x for x in city["validity"] if _month(x[0]) == r["month"] and x[1] == r["source"]]
        assert r["days"] == len(mine) == (31 if r["month"] == "2026-10-01" else 30)
        assert r["valid_rate"] == pytest.approx(statistics.fmean(x[2] for x in mine))
        assert r["min_rate"] == pytest.approx(min(x[3] for x in mine))


async def test_water_compliance_per_station_and_per_section(api, keys, city):
    water = city["water"]
    stations = await _report(api, keys["regulator"], "water-compliance", period="monthly", group="station")
    assert len(stations) == 6
    for r in stations:
        mine = [x for x in water if _month(x[0]) == r["month"] and x[1] == r["station"]]
        assert r["compliant_days"] == sum(x[4] for x in mine) and r["days"] == len(mine)
        assert r["compliance_rate"] == pytest.approx(sum(x[4] for x in mine) / len(mine))
        assert r["worst_class"] == WATER_CLASSES[max(x[3] for x in mine) - 1]
        assert r["target_class"] == "III"
    sections = await _report(api, keys["regulator"], "water-compliance", period="monthly", group="section")
    up = next(r for r in sections if r["month"] == "2026-11-01" and r["section"] == "上游")
    mine = [x for x in water if _month(x[0]) == "2026-11-01" and x[2] == "上游"]
    assert up["stations"] == 2 and up["days"] == 60 == len(mine)
    assert up["compliance_rate"] == pytest.approx(sum(x[4] for x in mine) / 60)


async def test_vehicle_assessment_per_enterprise(api, keys, city):
    monthly = await _report(api, keys["regulator"], "vehicle-assessment", period="monthly")
    assert len(monthly) == 4
    for r in monthly:
        mine = [x for x in city["kpis"] if _month(x[0]) == r["month"] and x[1] == r["enterprise"]]
        v = sum(1 for d, e in city["violations"] if _month(d) == r["month"] and e == r["enterprise"])
        assert r["registered"] == max(x[2] for x in mine)
        assert r["online_rate"] == pytest.approx(statistics.fmean(x[3] for x in mine))
        assert r["track_completeness"] == pytest.approx(statistics.fmean(x[4] for x in mine))
        assert r["data_valid_rate"] == pytest.approx(statistics.fmean(x[5] for x in mine))
        assert r["violations"] == v and r["violations_per_vehicle"] == pytest.approx(v / r["registered"])
    assert sum(r["violations"] for r in monthly) == len(city["violations"]) > 0


async def test_grid_voltage_rate_per_feeder(api, keys, city):
    monthly = await _report(api, keys["regulator"], "grid-voltage", period="monthly")
    assert {(r["month"], r["feeder"]) for r in monthly} == {(m, f) for m in ("2026-10-01", "2026-11-01")
                                                            for f in ("F1", "F2")}
    for r in monthly:
        mine = [x for x in city["grid"] if _month(x[0]) == r["month"] and x[1] == r["feeder"] and x[3] is not None]
        assert r["voltage_rate"] == pytest.approx(sum(x[2] * x[3] for x in mine) / sum(x[2] for x in mine))
        assert r["meters"] == (2 if r["feeder"] == "F1" else 1)


async def test_meter_collection_rate_per_district_and_monthly_csv(api, keys, city):
    monthly = await _report(api, keys["regulator"], "meter-collection", period="monthly")
    assert [r["month"] for r in monthly] == ["2026-10-01", "2026-11-01"]
    for r in monthly:
        mine = [x for x in city["meters"] if _month(x[0]) == r["month"]]
        assert (r["expected"], r["received"]) == (sum(x[1] for x in mine), sum(x[2] for x in mine))
        assert r["collection_rate"] == pytest.approx(r["received"] / r["expected"])
        assert r["district"] == keys["region"] and r["concentrators"] == 2
    # the monthly report as a regulator downloads it: CSV, read back with Python's csv module
    r = await api.get("/v1/reports/meter-collection", params={"from": FIRST.isoformat(), "to": LAST.isoformat(),
                                                              "period": "monthly", "format": "csv", "lang": "zh"},
                      headers=h(keys["regulator"]))
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    assert "attachment" in r.headers["content-disposition"]
    table = list(csv.DictReader(io.StringIO(r.content.decode("utf-8-sig"))))
    assert len(table) == 2 and "采集成功率" in table[0] and "月份" in table[0] and "区县" in table[0]
    assert [float(t["采集成功率"]) for t in table] == pytest.approx([m["collection_rate"] for m in monthly])
    r = await api.get("/v1/reports/emissions", params={"from": FIRST.isoformat(), "to": LAST.isoformat()},
                      headers={**h(keys["regulator"]), "Accept": "text/csv"})  # every row, not a page
    rows = list(csv.reader(io.StringIO(r.content.decode("utf-8-sig"))))
    assert rows[0][:3] == ["day", "region", "source"] and len(rows) - 1 == len(city["source"])


async def test_reports_are_scoped_by_the_keys_regions(api, keys, city):
    assert await _report(api, keys["other"], "meter-collection", period="monthly") == []
    assert len(await _report(api, keys["admin"], "meter-collection", period="monthly", region=keys["region"])) == 2
    r = await api.get("/v1/reports/emissions", params={"from": "2026-11-02", "to": "2026-11-01"},
                      headers=h(keys["regulator"]))
    assert r.status_code == 422 and r.json()["error"] == "invalid_query"


async def test_report_default_window_before_year_one_is_not_a_crash(api, keys):
    """Only 'to', in year 1: the default window (30 days, or 12 months) starts at the first day there is."""
    for period, to in (("monthly", "0001-03-01"), ("daily", "0001-01-05")):
        r = await api.get("/v1/reports/water-compliance", params={"period": period, "to": to},
                          headers=h(keys["regulator"]))
        assert r.status_code == 200 and r.json()["data"] == [], (period, r.text)


# --- alert statistics --------------------------------------------------------------------------------

async def test_alert_stats_counts_and_time_to_ack_and_clear(api, pool, keys):
    region = keys["region"]
    t0 = datetime(2026, 11, 20, 1, 0, tzinfo=timezone.utc)  # 09:00 China time
    # (stream, severity, minutes to ack or None, minutes to clear or None)
    spec = [("air", "major", 5, 30), ("air", "major", 15, None), ("air", "critical", None, 10),
            ("water", "major", 1, 2), ("water", "major", 3, None), ("water", "major", None, None)]
    async with pool.acquire() as con:
        dev = await _device(con, f"AS-{region}", region, "air")
        for k, (stream, sev, ack, clear) in enumerate(spec):
            await con.execute(
                "INSERT INTO alerts (rule_id, device, device_id, region, stream, metric, severity, state, title,"
                " raised_at, last_seen, acknowledged_at, cleared_at) VALUES ($1, $2, 'x', $3, $4, $5, $6, $7, 't',"
                " $8, $8, $9, $10)", 7000 + k % 2, dev, region, stream, f"m{k}", sev,
                "cleared" if clear else ("acknowledged" if ack else "active"), t0,
                t0 + timedelta(minutes=ack) if ack else None, t0 + timedelta(minutes=clear) if clear else None)
    r = await api.get("/v1/alerts/stats", params={"by": ["stream", "severity"], "region": region},
                      headers=h(keys["regulator"]))
    assert r.status_code == 200, r.text
    got = {(x["stream"], x["severity"]): x for x in r.json()["data"]}
    assert set(got) == {("air", "major"), ("air", "critical"), ("water", "major")}
    wm = got[("water", "major")]
    assert (wm["alerts"], wm["acknowledged"], wm["cleared"], wm["open"]) == (3, 2, 1, 2)
    assert wm["tta_p50_s"] == pytest.approx(120.0)  # acks after 1 and 3 minutes: median 2 min
    assert wm["tta_p90_s"] == pytest.approx(60 + 0.9 * 120)  # linear interpolation (percentile_cont)
    assert wm["ttc_p50_s"] == pytest.approx(120.0)
    am = got[("air", "major")]
    assert am["tta_p50_s"] == pytest.approx(600.0) and am["ttc_p90_s"] == pytest.approx(1800.0)
    r = await api.get("/v1/alerts/stats", params={"by": ["day", "rule"], "region": region},
                      headers=h(keys["regulator"]))
    days = {(x["day"], x["rule_id"]): x["alerts"] for x in r.json()["data"]}
    assert days == {("2026-11-20", 7000): 3, ("2026-11-20", 7001): 3}
    r = await api.get("/v1/alerts/stats", params={"region": region}, headers=h(keys["other"]))
    assert r.json()["data"] == []  # another region's key sees none of them
    r = await api.get("/v1/alerts/stats", params={"region": region, "format": "csv", "lang": "zh"},
                      headers=h(keys["regulator"]))
    table = list(csv.DictReader(io.StringIO(r.content.decode("utf-8-sig"))))
    assert table[0]["区域"] == region and table[0]["告警数"] == "6"


# --- audit, keys ----------------------------------------------------------------------------------------

async def _audit(api, admin, **params):
    r = await api.get("/v1/audit", params=params, headers=h(admin))
    assert r.status_code == 200, r.text
    return r.json()["data"]


async def test_every_kind_of_write_is_audited_with_before_and_after(api, pool, keys, tmp_path):
    admin, region = keys["admin"], keys["region"]
    rule = {"name": "audit me", "kind": "upper", "threshold": 10, "metric": "PM25"}
    r = await api.post("/v1/rules", json=rule, headers=h(admin))
    rid = r.json()["id"]
    await api.put(f"/v1/rules/{rid}", json={**rule, "threshold": 20}, headers=h(admin))
    await api.delete(f"/v1/rules/{rid}", headers=h(admin))
    hist = (await api.get(f"/v1/rules/{rid}/history", headers=h(keys["regulator"]))).json()["data"]
    assert [e["action"] for e in hist] == ["rule.disable", "rule.update", "rule.create"]
    assert hist[1]["before"]["definition"]["threshold"] == 10 and hist[1]["after"]["definition"]["threshold"] == 20
    assert hist[0]["before"]["enabled"] is True and hist[0]["after"]["enabled"] is False
    assert hist[2]["before"] is None and hist[2]["actor"] == "rep-admin" and hist[2]["source"] == "api"
    # a key created (as the CLI does) and revoked through the API
    async with pool.acquire() as con:
        key = await create_key(con, name="temp", role="regulator", regions=[region], audit_actor="cli:tester")
    key_id = key.split("_")[1]
    assert (await api.delete(f"/v1/keys/{key_id}", headers=h(admin))).status_code == 204
    entries = await _audit(api, admin, object_type="api_key", object_id=key_id)
    assert [(e["action"], e["source"]) for e in entries] == [("key.revoke", "api"), ("key.create", "cli")]
    assert entries[0]["before"]["revoked_at"] is None and entries[0]["after"]["revoked_at"] is not None
    assert "secret_hash" not in json.dumps(entries) and key.split("_", 2)[2] not in json.dumps(entries)
    # a device provisioned by the CLI, then changed: secrets masked
    dev_id = f"AU{uuid.uuid4().hex[:8]}"
    async with pool.acquire() as con:
        first = await provision_device(con, DeviceSpec(dev_id, region, "pollution", "hj212", "旧名"),
                                       password_file=None, actor="cli:tester")
        await provision_device(con, DeviceSpec(dev_id, region, "pollution", "hj212", "新名"), password_file=None,
                               actor="cli:tester")
    dev = await _audit(api, admin, object_type="device", object_id=dev_id)
    assert [e["action"] for e in dev] == ["device.provision", "device.provision"]
    assert dev[1]["before"] is None and dev[1]["after"]["name"] == "旧名"
    assert dev[0]["before"]["name"] == "旧名" and dev[0]["after"]["name"] == "新名"
    # the PW lives in the device-secret store: the device row the audit log copies never holds it
    assert "hj212_pw" not in dev[0]["after"]["attrs"] and first.secrets["hj212_pw"] not in json.dumps(dev)
    # an alert acknowledged and closed
    async with pool.acquire() as con:
        d = await con.fetchval("SELECT id FROM devices WHERE device_id = $1", dev_id)
        aid = await con.fetchval(
            "INSERT INTO alerts (rule_id, device, device_id, region, stream, metric, severity, state, title, raised_at,"
            " last_seen, cleared_at) VALUES (1, $1, $2, $3, 'pollution', 'SO2', 'major', 'active', 't', now(), now(),"
            " NULL) RETURNING id", d, dev_id, region)
    assert (await api.post(f"/v1/alerts/{aid}/ack", json={"comment": "seen"}, headers=h(keys["regulator"]))
            ).status_code == 200
    async with pool.acquire() as con:
        await con.execute("UPDATE alerts SET state = 'cleared', cleared_at = now() WHERE id = $1", aid)
    assert (await api.post(f"/v1/alerts/{aid}/close", headers=h(keys["operator"]))).status_code == 200
    al = await _audit(api, admin, object_type="alert", object_id=str(aid))
    assert [(e["action"], e["actor"], e["before"]["state"], e["after"]["state"]) for e in al] == [
        ("alert.close", "rep-op", "cleared", "closed"), ("alert.ack", "rep-reg", "active", "acknowledged")]
    assert al[1]["after"]["comment"] == "seen" and al[1]["region"] == region
    # only admins read the log; nobody rewrites it
    assert (await api.get("/v1/audit", headers=h(keys["operator"]))).status_code == 403
    async with pool.acquire() as con:
        for sql in ("UPDATE audit_log SET actor = 'x'", "DELETE FROM audit_log", "TRUNCATE audit_log"):
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await con.execute(sql)


async def test_keys_list_and_revoke(api, pool, keys):
    admin = keys["admin"]
    r = await api.get("/v1/keys", headers=h(admin))
    assert r.status_code == 200
    listed = {k["key_id"]: k for k in r.json()["data"]}
    op_id = keys["operator"].split("_")[1]
    assert listed[op_id]["name"] == "rep-op" and listed[op_id]["active"] is True
    assert listed[op_id]["role"] == "operator" and listed[op_id]["regions"] == [keys["region"]]
    assert all("secret" not in k and "hash" not in json.dumps(k) for k in r.json()["data"])
    assert (await api.get("/v1/keys", headers=h(keys["operator"]))).status_code == 403
    assert (await api.delete(f"/v1/keys/{op_id}", headers=h(keys["operator"]))).status_code == 403
    assert (await api.delete(f"/v1/keys/{op_id}", headers=h(admin))).status_code == 204
    assert (await api.get("/v1/devices", headers=h(keys["operator"]))).status_code == 401  # stops working at once
    assert (await api.delete(f"/v1/keys/{op_id}", headers=h(admin))).status_code == 404  # already revoked
    r = await api.get("/v1/keys", params={"active": "false"}, headers=h(admin))
    assert op_id in {k["key_id"] for k in r.json()["data"]}


# --- dead letters ---------------------------------------------------------------------------------------

async def test_dead_letters_list_and_replay_after_registering_the_device(api, pool, keys):
    region = keys["region"]
    dev_id = f"DL{uuid.uuid4().hex[:8]}"
    ts = 1_780_000_000_000
    topic = f"wl/{region}/air/{dev_id}/telemetry"
    payload = orjson.dumps({"ts": ts, "values": {"PM25": 35.0, "PM10": 60.0}})
    async with pool.acquire() as con:
        await con.execute("INSERT INTO dead_letters (topic, device_id, kind, reason, detail, payload) VALUES"
                          " ($1, $2, 'telemetry', 'unknown_device', 'device not registered', $3),"
                          " ($1, $2, 'telemetry', 'bad_json', 'oops', $4)", topic, dev_id, payload, b"{not json")
    # unknown device: no region yet, so only all-region keys see it
    r = await api.get("/v1/dead-letters", params={"device": dev_id}, headers=h(keys["admin"]))
    rows = r.json()["data"]
    assert [x["reason"] for x in rows] == ["bad_json", "unknown_device"]
    assert rows[1]["payload_preview"].startswith('{"ts"') and rows[1]["payload_size"] == len(payload)
    assert (await api.get("/v1/dead-letters", params={"device": dev_id}, headers=h(keys["operator"]))
            ).json()["data"] == []
    assert (await api.get("/v1/dead-letters", headers=h(keys["regulator"]))).status_code == 403
    ids = [x["id"] for x in rows]
    # replay before the fix: refused again for the same reason, nothing written, no new dead letter
    r = await api.post("/v1/dead-letters/replay", json={"ids": ids}, headers=h(keys["admin"]))
    assert r.status_code == 200, r.text
    assert {o["id"]: o["result"] for o in r.json()["results"]} == {ids[0]: "bad_json", ids[1]: "unknown_device"}
    async with pool.acquire() as con:
        assert await con.fetchval("SELECT count(*) FROM dead_letters WHERE device_id = $1", dev_id) == 2
        async with device_change(con, dev_id, action="device.provision", actor="cli:tester"):
            await con.execute("INSERT INTO devices (device_id, region, stream) VALUES ($1, $2, 'air')", dev_id, region)
    # the fix: the device is registered; the operator of its region now sees and replays it
    r = await api.get("/v1/dead-letters", params={"device": dev_id, "reason": "unknown_device"},
                      headers=h(keys["operator"]))
    assert [x["id"] for x in r.json()["data"]] == [ids[1]]
    r = await api.post("/v1/dead-letters/replay", json={"ids": [ids[1]]}, headers=h(keys["operator"]))
    assert r.json() == {"replayed": 1, "ok": 1, "failed": 0, "results": [{"id": ids[1], "result": "ok", "records": 2}]}
    async with pool.acquire() as con:
        values = await con.fetch("SELECT m.name, r.value FROM readings r JOIN metrics m ON m.id = r.metric"
                                 " JOIN devices d ON d.id = r.device WHERE d.device_id = $1 ORDER BY 1", dev_id)
        assert [(v["name"], v["value"]) for v in values] == [("PM10", 60.0), ("PM25", 35.0)]
    r = await api.get("/v1/dead-letters", params={"device": dev_id, "replayed": "true"}, headers=h(keys["admin"]))
    assert {x["id"]: x["replay_result"] for x in r.json()["data"]} == {ids[0]: "bad_json", ids[1]: "ok"}
    replays = await _audit(api, keys["admin"], action="dead_letter.replay", actor="rep-op")
    assert replays and replays[0]["after"] == [{"id": ids[1], "result": "ok", "records": 2}]


# --- one paging style on every list route ------------------------------------------------------------

def _list_operations(doc):
    comps = doc["components"]["schemas"]
    for path, item in doc["paths"].items():
        op = item.get("get")
        if not op:
            continue
        schema = op["responses"]["200"]["content"].get("application/json", {}).get("schema", {})
        target = comps.get(schema.get("$ref", "").rsplit("/", 1)[-1], {})
        if "data" in target.get("properties", {}):
            yield path, op, target


async def test_every_list_route_pages_with_one_cursor_style_and_says_so(api, pool, keys, city):
    admin = keys["admin"]
    doc = (await api.get("/openapi.json")).json()
    ops = list(_list_operations(doc))
    assert len(ops) >= 25
    for path, op, target in ops:
        params = {p["name"]: p for p in op.get("parameters", [])}
        assert {"cursor", "limit", "format", "lang"} <= set(params), path
        assert "offset" not in params, path
        for old in ("since", "until"):  # the old vocabulary survives only as documented deprecated aliases
            assert old not in params or params[old].get("deprecated") is True, (path, old)
        assert target["properties"]["count"]["description"].startswith("number of items in this page"), path
        assert "next_cursor" in target["properties"] and "text/csv" in op["responses"]["200"]["content"], path
        assert "next_cursor" in op["description"], path
    # walk every list route that needs no other input, one item a page: count is the page's, cursors go on
    walked = 0
    for path, op, _ in ops:
        required = [p["name"] for p in op.get("parameters", []) if p.get("required")]
        if "{" in path or required:
            continue
        extra = {"from": FIRST.isoformat(), "to": LAST.isoformat()} if path.startswith("/v1/reports") else {}
        seen, cursor, pages = [], None, 0
        while pages < 3:
            r = await api.get(path, params={**extra, "limit": 1, **({"cursor": cursor} if cursor else {})},
                              headers=h(admin))
            assert r.status_code == 200, (path, r.text)
            body = r.json()
            assert body["count"] == len(body["data"]) <= 1, path
            seen += [json.dumps(x, sort_keys=True) for x in body["data"]]
            pages += 1
            cursor = body["next_cursor"]
            if cursor is None:
                break
        assert len(seen) == len(set(seen)), (path, seen)  # no item twice
        walked += pages > 1
    assert walked >= 8  # routes with data here: devices, rules, alerts, keys, audit, reports...
    r = await api.get("/v1/devices", params={"cursor": "not-a-cursor"}, headers=h(admin))
    assert r.status_code == 422 and r.json()["error"] == "invalid_query"
    r = await api.get("/v1/devices", params={"format": "csv", "limit": 2, "lang": "zh"}, headers=h(admin))
    head = next(csv.reader(io.StringIO(r.content.decode("utf-8-sig"))))
    assert r.headers["content-type"].startswith("text/csv") and "设备编号" in head and "区域" in head
