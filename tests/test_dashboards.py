"""Dashboards as code: structure, Grafana's macro expansion, every panel against the real database, and
the read-only role."""
from __future__ import annotations

import json
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path

import asyncpg
import pytest

from wulian.core.timebase import CHINA_TZ
from wulian.core.const import Stream
from wulian.dashboards.build import DASHBOARDS, GRANTS_SQL, NEVER_GRANTED, OUT_DIR, READONLY_ROLE, file_name
from wulian.dashboards.build import granted_tables
from wulian.dashboards.build import grants_migrations, grants_sql, readonly_tables, rendered, write_grants
from wulian.dashboards.model import DATASOURCE_UID
from wulian.dashboards.render import to_json_text
from wulian.dashboards.verify import (
    MacroError, TimeRange, VarValue, builtin_vars, check_shape, expand, expand_macros, format_interval,
    interpolate_variables, panel_interval_ms, parse_interval, resolve_variables, verify, verify_dashboard,
)
from wulian.simulators.city import build_city
from wulian.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
REGION = "dashtest"
RNG = TimeRange(datetime(2026, 11, 26, 2, 0, tzinfo=timezone.utc), datetime(2026, 11, 26, 8, 0, 0, 123000,
                                                                                     tzinfo=timezone.utc))

# ---------------------------------------------------------------------------------------------------
# Structure (no database)


def _targets(doc):
    for p in doc["panels"]:
        for t in p["targets"]:
            yield p, t


def test_uids_and_panel_ids_are_unique_and_stable():
    docs = rendered()
    uids = [d["uid"] for d in docs]
    assert len(set(uids)) == len(uids) == 8
    assert all(re.fullmatch(r"[A-Za-z0-9_-]{1,40}", u) for u in uids)
    for d in docs:
        ids = [p["id"] for p in d["panels"]]
        assert len(set(ids)) == len(ids) and ids, d["uid"]
    assert rendered() == docs  # deterministic: same code, same JSON


def test_every_target_has_the_datasource_and_raw_sql():
    for d in rendered():
        for p, t in _targets(d):
            assert t["datasource"]["uid"] == DATASOURCE_UID, (d["uid"], p["title"])
            assert p["datasource"]["uid"] == DATASOURCE_UID
            assert t["rawSql"].strip() and t["format"] in ("time_series", "table")
        for v in d["templating"]["list"]:
            assert v["datasource"]["uid"] == DATASOURCE_UID


def test_variables_used_are_defined_before_use():
    builtin = set(builtin_vars(RNG, 60000))
    for d in rendered():
        defined: list[str] = []
        for v in d["templating"]["list"]:
            used = set(re.findall(r"\$(\w+)", v["query"])) - builtin
            assert {u for u in used if not u.startswith("__")} <= set(defined), (d["uid"], v["name"])
            defined.append(v["name"])
        for p, t in _targets(d):
            used = {u for u in re.findall(r"\$\{?(\w+)", t["rawSql"]) if not u.startswith("__")}
            assert used <= set(defined), (d["uid"], p["title"], used - set(defined))


async def test_every_hypertable_read_is_bounded_by_the_time_picker(pool):
    """Each FROM/JOIN of a hypertable comes with a time-range macro, so chunk exclusion bounds the scan."""
    async with pool.acquire() as con:
        hypertables = {r["hypertable_name"] for r in await con.fetch(
            "SELECT hypertable_name FROM timescaledb_information.hypertables")}
    assert {"readings", "env_aqi_hourly", "traffic_forecasts"} <= hypertables
    pattern = re.compile(r"\b(?:FROM|JOIN)\s+(" + "|".join(sorted(hypertables)) + r")\b")
    checked = 0
    for dash in DASHBOARDS:
        for p in dash.panels:
            for q in p.queries:
                reads = pattern.findall(q.sql)
                bounds = q.sql.count("$__timeFilter(") + q.sql.count("$__timeFrom()")
                assert len(reads) <= bounds, (dash.uid, p.title, reads)
                checked += bool(reads)
    assert checked > 20


def test_series_panels_bucket_to_the_interval():
    for dash in DASHBOARDS:
        for p in dash.panels:
            if p.kind in ("timeseries", "statetimeline"):
                for q in p.queries:
                    assert "$__timeGroupAlias(" in q.sql, p.title


def test_committed_json_and_grants_are_up_to_date():
    for d, doc in zip(DASHBOARDS, rendered()):
        path = OUT_DIR / d.folder / file_name(d)
        assert path.read_text(encoding="utf-8") == to_json_text(doc), f"run `wulian dashboards build` ({path})"
    newest = grants_migrations()[-1]
    assert newest.read_text(encoding="utf-8") == grants_sql(), "run `wulian dashboards grants --write` (or --new)"


def test_grants_cover_exactly_what_the_dashboards_read(tmp_path):
    tables = readonly_tables()
    assert {"readings", "devices", "metrics", "vehicle_positions", "traffic_observations"} <= set(tables)
    assert grants_migrations()[0] == GRANTS_SQL and granted_tables(grants_migrations()[-1]) == tables
    assert "retention_policies" not in tables and "api_keys" not in tables
    assert not any(NEVER_GRANTED & set(granted_tables(m)) for m in grants_migrations())  # device_secrets...
    # a changed table set after the last migration was applied goes into a new, later migration
    (tmp_path / "0001_init.sql").write_text("")
    (tmp_path / "0090_grafana_readonly.sql").write_text(grants_sql().replace("        'alerts',\n", ""))
    (tmp_path / "0095_things.sql").write_text("")
    added = write_grants(new=True, sql_dir=tmp_path)
    assert added.name == "0096_grafana_readonly_96.sql" and granted_tables(added) == tables
    assert write_grants(new=True, sql_dir=tmp_path) == added  # up to date: nothing new


def test_provisioning_points_at_the_datasource_and_the_json():
    ds = (ROOT / "deploy/grafana/provisioning/datasources/wulian.yaml").read_text()
    assert f"uid: {DATASOURCE_UID}" in ds and f"user: {READONLY_ROLE}" in ds and "timescaledb: true" in ds
    prov = (ROOT / "deploy/grafana/provisioning/dashboards/wulian.yaml").read_text()
    assert "foldersFromFilesStructure: true" in prov and "type: file" in prov


# ---------------------------------------------------------------------------------------------------
# Grafana's expansion


def test_time_macros_expand_like_grafana_postgres():
    sql = expand_macros("WHERE $__timeFilter(r.time) AND t < $__timeTo() AND t >= $__timeFrom()", RNG, 60000)
    assert sql == ("WHERE r.time BETWEEN '2026-11-26T02:00:00Z' AND '2026-11-26T08:00:00.123Z' "
                   "AND t < '2026-11-26T08:00:00.123Z' AND t >= '2026-11-26T02:00:00Z'")
    assert expand_macros("$__timeGroupAlias(time, $__interval)", RNG, 20000) == \
        "time_bucket('20.000s',time) AS \"time\""
    assert expand_macros("$__timeGroup(time, '5m', NULL) t", RNG, 1000) == "time_bucket('300.000s',time) t"
    # followed directly by a comma: Grafana's pre-5.3 compatibility adds the alias
    assert expand_macros("SELECT $__timeGroup(time, 1h), v", RNG, 1000) == \
        "SELECT time_bucket('3600.000s',time) AS \"time\", v"
    assert expand_macros("$__timeGroup(time, 90s)", RNG, 1000, timescaledb=False) == \
        "floor(extract(epoch from time)/90)*90"
    assert expand_macros("$__unixEpochFilter(ts)", RNG, 1000) == "ts >= 1795658400 AND ts <= 1795680000"
    assert expand_macros("$__interval_ms $__interval $__unixEpochFrom()", RNG, 90000) == "90000 1m 1795658400"
    with pytest.raises(MacroError, match="unknown macro"):
        expand_macros("$__nope(x)", RNG, 1000)
    with pytest.raises(MacroError, match="interval"):
        expand_macros("$__timeGroup(time, soon)", RNG, 1000)
    with pytest.raises(MacroError, match="missing time column"):
        expand_macros("$__timeFilter()", RNG, 1000)


def test_variables_render_as_the_sql_datasource_does():
    multi = VarValue(("shantou", "o'brien"), multi=True, include_all=True)
    single = VarValue(("PM25",), multi=False, include_all=False)
    custom_all = VarValue(("a", "b"), include_all=True, all_value="%", is_all=True)
    vs = {"region": multi, "metric": single, "x": custom_all}
    out = interpolate_variables(
        "IN ($region) m=$metric ${metric} [[metric]] ${region:csv} ${region:sqlstring} x=$x $unknown $__timeFilter(t)",
        vs, {})
    assert out == ("IN ('shantou','o''brien') m=PM25 PM25 PM25 shantou,o'brien 'shantou','o''brien' x=% "
                   "$unknown $__timeFilter(t)")


def test_interval_follows_grafana_rounding():
    assert parse_interval("1h30m") == 5400 and parse_interval("'5m'") == 300 and parse_interval("2d") == 172800
    assert format_interval(90000) == "1m" and format_interval(500) == "500ms" and format_interval(86400000) == "1d"
    assert panel_interval_ms(RNG, 1000, "") == 20000  # 6 h / 1000 = 21.6 s -> 20 s
    assert panel_interval_ms(RNG, 1000, "1h") == 3600000  # the panel's min interval wins
    rng = TimeRange(RNG.start, RNG.start + timedelta(days=30))
    assert format_interval(panel_interval_ms(rng, 1000, "10s")) == "30m"  # 2592 s -> 30 min


def test_shape_checks_reject_what_a_panel_cannot_draw():
    ts = [("time", "timestamptz"), ("metric", "text"), ("value", "float8")]
    assert check_shape("timeseries", "time_series", ts, []) is None
    assert "time" in check_shape("timeseries", "time_series", [("t", "timestamptz"), ("v", "float8")], [])
    assert "value" in check_shape("timeseries", "time_series", [("time", "timestamptz"), ("metric", "text")], [])
    assert "latitude" in check_shape("geomap", "table", [("lat", "float8"), ("longitude", "float8")], [])
    assert "missing" in check_shape("table", "table", [("a", "text")], ["a", "b"])


# ---------------------------------------------------------------------------------------------------
# Against the database, filled with a simulated city


@pytest.fixture(scope="module")
async def demo(pool) -> TimeRange:
    """A small simulated city over the last 90 minutes, one sample per device per minute, written directly
    (the ingest path has its own tests). Returns the range the dashboards are verified over."""
    now = datetime.now(timezone.utc).replace(microsecond=0)
    counts = {Stream.POLLUTION: 3, Stream.AIR: 3, Stream.WATER: 3, Stream.GRID: 3, Stream.METER: 3,
              Stream.VEHICLE: 3, Stream.TRAFFIC: 3}
    fleet = build_city(counts, seed=11)
    times = [now - timedelta(minutes=90 - k) for k in range(90)]
    async with pool.acquire() as con:
        metric_ids = {r["name"]: r["id"] for r in await con.fetch("SELECT id, name FROM metrics")}
        ids = {}
        for i, dev in enumerate(fleet):
            attrs = {}
            if dev.stream is Stream.AIR:
                attrs = {"lat": 23.35 + 0.01 * i, "lon": 116.68 + 0.01 * i}
            if dev.stream is Stream.VEHICLE:
                attrs = {"enterprise": "汕头危运" if i % 2 else "潮汕客运"}
            if dev.stream is Stream.WATER:
                attrs = {"river": "Lianjiang", "km": 50.0 - 10 * int(dev.device_id[-4:]),  # LJ0001 at 40 km
                         "lat": 23.30 + 0.01 * i, "lon": 116.30 + 0.01 * i}
            if dev.stream in (Stream.POLLUTION, Stream.TRAFFIC):  # outlets and detectors on the maps
                attrs = {"lat": 23.40 + 0.01 * i, "lon": 116.60 + 0.01 * i}
            ids[dev.device_id] = await con.fetchval(
                "INSERT INTO devices (device_id, region, stream, attrs, last_seen) VALUES ($1, $2, $3, $4::jsonb, $5)"
                " RETURNING id", f"DT-{dev.device_id}", REGION, str(dev.stream), json.dumps(attrs), times[-1])
        readings, positions, traffic = [], [], []
        for dev in fleet:
            for t in times:
                doc = dev.sample(int(t.timestamp()) * 1_000_000_000)
                did = ids[dev.device_id]
                if dev.stream is Stream.VEHICLE:
                    positions.append((t, did, doc["lat"], doc["lon"], doc["speed"], doc["heading"], doc["mileage"]))
                elif dev.stream is Stream.TRAFFIC:
                    traffic.append((t, did, doc["speed"], doc["flow"], doc["occupancy"]))
                else:
                    flag = "M" if dev.stream is Stream.POLLUTION and t == times[10] else "N"
                    readings += [(t, did, metric_ids[k], float(v), flag) for k, v in doc["values"].items()]
        meter = ids[next(d.device_id for d in fleet if d.stream is Stream.METER)]
        readings.append((times[-1] + timedelta(seconds=30), meter, metric_ids["elec_kwh"], 0.5, "N"))  # rollback
        await con.copy_records_to_table("readings", records=readings,
                                        columns=["time", "device", "metric", "value", "flag"])
        await con.copy_records_to_table("vehicle_positions", records=positions,
                                        columns=["time", "device", "lat", "lon", "speed_kmh", "heading", "mileage_km"])
        await con.copy_records_to_table("traffic_observations", records=traffic,
                                        columns=["time", "device", "speed_kmh", "flow_vph", "occupancy"])
        await con.execute("INSERT INTO dead_letters (time, topic, device_id, kind, reason, detail) VALUES"
                          " ($1, 'wl/dashtest/air/X1/telemetry', 'X1', 'telemetry', 'bad_json', 'oops')", times[5])
        for k, (stream, severity) in enumerate((("air", "major"), ("water", "critical"), ("grid", "warning"))):
            dev = next(d for d in fleet if d.stream == stream)
            await con.execute(
                "INSERT INTO alerts (rule_id, device, device_id, region, stream, metric, severity, state, title,"
                " raised_at, last_seen) VALUES ($1, $2, $3, $4, $5, '', $6, 'active', 'test', $7, $7)",
                900 + k, ids[dev.device_id], f"DT-{dev.device_id}", REGION, stream, severity, times[20 + k])
        segments = [ids[d.device_id] for d in fleet if d.stream is Stream.TRAFFIC]
        await con.copy_records_to_table(
            "traffic_forecasts", columns=["issued_at", "time", "device", "horizon_steps", "horizon_min", "speed_kmh",
                                          "model_id"],
            records=[(t, t + timedelta(minutes=5), seg, 1, 5, 50.0, -1) for t in times[::5] for seg in segments])
        await con.execute(
            "INSERT INTO traffic_incidents (device, region, state, started_at, detected_at, expected_kmh, observed_kmh,"
            " min_speed_kmh, min_residual) VALUES ($1, $2, 'open', $3, $4, 60, 12, 10, -48)",
            segments[0], REGION, times[40], times[45])
        await _fill_derived(con, fleet, ids, now)
    return TimeRange(now - timedelta(hours=3), now)


async def _insert(con, table: str, rows: list[dict]) -> None:
    cols = list(rows[0])
    sql = f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({', '.join(f'${i + 1}' for i in range(len(cols)))})"
    await con.executemany(sql, [tuple(r[c] for c in cols) for r in rows])


async def _fill_derived(con, fleet, ids, now: datetime) -> None:
    """A few rows in every derived table the dashboards read, shaped as the derive jobs write them."""
    by = {s: [ids[d.device_id] for d in fleet if d.stream is s] for s in Stream}
    hours = [now.replace(minute=0, second=0) - timedelta(hours=h) for h in (2, 1)]
    day = now.astimezone(CHINA_TZ).date()  # today in China
    midnight = datetime(day.year, day.month, day.day, tzinfo=CHINA_TZ)
    await _insert(con, "env_source_hourly", [
        {"time": h, "device": dev, "pollutant": p, "measured": 30.0, "converted": 33.0 + k, "valid_minutes": 60,
         "minutes": 60, "valid": True, "limit_value": 35.0 if p == "SO2" else None, "exceeded": k == 1 and p == "SO2",
         "rule": "HJ75"}
        for dev in by[Stream.POLLUTION] for k, h in enumerate(hours) for p in ("SO2", "NOx")])
    await _insert(con, "env_exceedances", [
        {"start_time": hours[1], "end_time": hours[1] + timedelta(hours=1), "device": by[Stream.POLLUTION][0],
         "pollutant": "SO2", "rule": "source_exceedance", "peak": 52.5, "peak_time": hours[1], "hours": 1,
         "limit_value": 35.0, "basis": "converted", "open": False}])
    await _insert(con, "env_completeness_daily", [
        {"time": midnight, "device": dev, "valid_rate": 0.95, "items": 5, "min_rate": 0.9}
        for dev in by[Stream.POLLUTION]])
    await _insert(con, "env_aqi_hourly", [
        {"time": h, "device": dev, "edition": "HJ633-2012", "aqi": 60 + i, "level": 2, "category": "良",
         "color": "#FFFF00", "primary_pollutants": ["PM2.5"], "iaqi": '{"PM25_24H": 60}', "concentrations": "{}",
         "missing": 0, "publishable": True}
        for i, dev in enumerate(by[Stream.AIR]) for h in hours])
    await _insert(con, "env_city_aqi", [
        {"time": h, "city": REGION, "report": "hourly", "edition": "HJ633-2012", "aqi": 61, "level": 2,
         "category": "良", "color": "#FFFF00", "primary_pollutants": ["PM2.5"], "iaqi": "{}", "stations": 3}
        for h in hours])
    await _insert(con, "env_water_hourly", [
        {"time": h, "device": dev, "standard": "GB3838-2002", "overall": 2 + i, "overall_class": "I II III".split()[i],
         "item_class": '{"DO": "II"}', "means": '{"DO": 6.5}', "target": 3, "compliant": 2 + i <= 3}
        for i, dev in enumerate(by[Stream.WATER]) for h in hours])
    await _insert(con, "env_pulse_events", [
        {"time": hours[1], "device": by[Stream.WATER][0], "river": "Lianjiang", "item": "NH3_N", "peak_value": 2.4,
         "peak_score": 6.1, "entry_upstream": None, "entry_downstream": "DT-LJ0001", "entry_km_from": None,
         "entry_km_to": 40.0, "confidence": 0.7, "evidence": "[]"}])
    await _insert(con, "grid_quality_daily", [
        {"device": dev, "day": day, "samples": 1440, "interruptions": 0, "voltage_rate": 0.99, "frequency_rate": 1.0,
         "unbalance_rate": 0.98, "dev_max_pct": 3.1, "dev_min_pct": -2.2}
        for dev in by[Stream.GRID]])
    await _insert(con, "grid_events", [
        {"device": by[Stream.GRID][0], "kind": "voltage", "start_time": hours[0], "end_time": hours[1], "open": False}])
    await _insert(con, "grid_outages", [
        {"region": REGION, "feeder": "F1", "start_time": hours[1], "end_time": now, "open": True, "meters": 3}])
    await _insert(con, "meter_consumption_daily", [
        {"device": dev, "metric": m, "day": day, "consumption": 1.5, "readings": 90, "complete": True}
        for dev in by[Stream.METER] for m in ("elec_kwh", "water_m3", "gas_m3", "heat_kwh")])
    await _insert(con, "meter_anomalies", [
        {"device": by[Stream.METER][0], "metric": "elec_kwh", "kind": "backwards", "start_time": now,
         "end_time": now, "value": 0.5, "previous": 1200.0, "open": False}])
    await _insert(con, "meter_collection_daily", [
        {"region": REGION, "concentrator": "C1", "day": day, "meters": 3, "expected": 288, "received": 280,
         "success_rate": 280 / 288}])
    await _insert(con, "vehicle_violations", [
        {"device": by[Stream.VEHICLE][0], "rule": "overspeed", "start_time": hours[1],
         "end_time": hours[1] + timedelta(minutes=3), "value": 96.0, "open": False}])
    await _insert(con, "vehicle_kpis", [
        {"day": day, "region": REGION, "scope": "enterprise", "grp": g, "registered": 2, "networked": 2,
         "online": 1, "network_rate": 1.0, "online_rate": 0.5, "track_completeness": 0.97, "valid_rate": 0.99,
         "drift_rate": 0.0}
        for g in ("汕头危运", "潮汕客运")])


async def test_every_panel_runs_as_the_readonly_role_and_returns_data(pool, demo):
    async with pool.acquire() as con:
        report = await verify(con, rendered(), demo, chosen={"region": [REGION]}, role=READONLY_ROLE)
    bad = [(r.dashboard, r.title, r.status, r.error) for r in report.results if r.status != "ok" or not r.rows]
    assert not bad, bad
    s = report.summary()
    assert s["panels"] == sum(len(d.panels) for d in DASHBOARDS) and s["failed"] == s["empty"] == 0
    by_title = {r.title: r for r in report.results}
    assert {"latitude", "longitude"} <= set(by_title["Stations: latest hourly AQI"].columns)
    assert by_title["Stations: latest hourly AQI"].rows == 3  # one marker per station
    assert by_title["Latest positions"].rows == 3
    assert by_title["Measured concentrations (raw)"].columns == ["time", "metric", "value"]


async def test_an_empty_selection_never_breaks_a_panel(pool, demo):
    """A region without such devices leaves the device variable no options; Grafana then sends an empty
    selection. Rendered panels treat it as no filter (render.empty_safe): zero failed, zero empty."""
    async with pool.acquire() as con:
        report = await verify(con, rendered(), demo, chosen={"region": [REGION], "device": []}, role=READONLY_ROLE)
    bad = [(r.dashboard, r.title, r.status, r.error) for r in report.results if r.status != "ok"]
    assert not bad, bad
    assert report.summary()["panels"] == sum(len(d.panels) for d in DASHBOARDS)  # the empty passes all passed
    by_title = {r.title: r for r in report.results}
    assert by_title["Latest positions"].rows == 3 and by_title["Segments: speed vs forecast"].rows == 3


async def test_verify_fails_a_query_that_breaks_on_an_empty_selection(pool, demo):
    """``IN (${device:sqlstring})`` is not rewritten: with nothing selected it reads ``IN ()``. The normal
    pass (All) is fine; the empty-selection pass must report it failed."""
    doc = json.loads(json.dumps(next(d for d in rendered() if d["uid"] == "wulian-traffic")))
    panel = next(p for p in doc["panels"] if p["title"] == "Flow")
    panel["targets"][0]["rawSql"] = panel["targets"][0]["rawSql"].replace(
        "WHERE ", "WHERE d.device_id IN (${device:sqlstring}) AND ", 1)
    async with pool.acquire() as con:
        report = await verify(con, [doc], demo, chosen={"region": [REGION]}, role=READONLY_ROLE)
        plain = await verify(con, [doc], demo, chosen={"region": [REGION]}, role=READONLY_ROLE,
                             empty_selection=False)
    failed = [(r.title, r.error) for r in report.results if r.status == "failed"]
    assert [t for t, _ in failed] == ["Flow [empty $device]"] and "syntax error" in failed[0][1]
    assert plain.summary()["failed"] == 0


def test_geomaps_use_the_configured_tile_server_never_an_online_default(monkeypatch):
    maps = [p for d in rendered() for p in d["panels"] if p["type"] == "geomap"]
    titles = {p["title"] for p in maps}
    assert {"Water stations: latest class", "Sources: exceedance state", "Segments: speed vs forecast",
            "Vehicle track", "Latest positions", "Stations: latest hourly AQI"} <= titles
    for p in maps:
        base = p["options"]["basemap"]
        assert base["type"] == "xyz" and base["config"]["url"] == "/tiles/{z}/{x}/{y}.png", p["title"]
    assert next(p for p in maps if p["title"] == "Vehicle track")["options"]["layers"][0]["type"] == "route"
    # the entry point's settings decide (``wulian dashboards build`` passes ``Settings().dashboards``)
    monkeypatch.setenv("WULIAN_DASHBOARDS__TILE_URL", "http://tiles.gov.local/{z}/{x}/{y}.png")
    url = next(p for d in rendered(Settings().dashboards) for p in d["panels"]
               if p["type"] == "geomap")["options"]["basemap"]
    assert url["config"]["url"] == "http://tiles.gov.local/{z}/{x}/{y}.png"
    assert next(p for d in rendered() for p in d["panels"]  # the defaults: no environment read below the CLI
                if p["type"] == "geomap")["options"]["basemap"]["config"]["url"] == "/tiles/{z}/{x}/{y}.png"


async def _panel_rows(con, uid: str, title: str, rng: TimeRange, chosen=None):
    doc = next(d for d in rendered() if d["uid"] == uid)
    variables = await resolve_variables(con, doc, rng, chosen or {"region": [REGION]})
    panel = next(p for p in doc["panels"] if p["title"] == title)
    sql = expand(panel["targets"][0]["rawSql"], rng, variables,
                 panel_interval_ms(rng, 1000, panel.get("interval") or "10s"))
    return await con.fetch(sql)


async def test_panels_compute_what_they_claim(pool, demo):
    async with pool.acquire() as con:
        checks = await _panel_rows(con, "wulian-meters", "Register checks", demo)
        assert sum(r["rollbacks"] for r in checks) == 1 and all(r["consumption"] > 0 for r in checks)
        validity = await _panel_rows(con, "wulian-pollution", "Valid-sample rate (raw)", demo)
        assert min(float(r["valid_pct"]) for r in validity) == pytest.approx(100 * 89 / 90)  # one 'M' sample in 90
        alerts = await _panel_rows(con, "wulian-overview", "Open alerts by stream and severity", demo)
        assert {(r["stream"], r["critical"], r["major"], r["warning"]) for r in alerts} >= {
            ("water", 1, 0, 0), ("air", 0, 1, 0), ("grid", 0, 0, 1)}
        classes = await _panel_rows(con, "wulian-water", "Station class along the river", demo)
        assert [r["metric"] for r in classes[:3]] == [  # upstream first: the river order of the state timeline
            "DT-LJ0003 · Lianjiang 20 km", "DT-LJ0002 · Lianjiang 30 km", "DT-LJ0001 · Lianjiang 40 km"]
        assert {r["class"] for r in classes} == {2, 3, 4}
        exceed = await _panel_rows(con, "wulian-pollution", "Exceedance episodes", demo)
        assert [(r["pollutant"], float(r["peak_ratio"])) for r in exceed] == [("SO2", 1.5)]
        kpis = await _panel_rows(con, "wulian-vehicles", "Regulator KPIs per enterprise", demo)
        assert {r["enterprise"]: r["online_rate"] for r in kpis} == {"汕头危运": 0.5, "潮汕客运": 0.5}
        online = await _panel_rows(con, "wulian-overview", "Devices online / offline", demo)
        assert online[0]["online"] == 21 and online[0]["offline"] == 0


async def test_verify_reports_failures_and_empty_panels(pool, demo):
    doc = next(d for d in rendered() if d["uid"] == "wulian-traffic")
    broken = json.loads(json.dumps(doc))
    panels = {p["title"]: p for p in broken["panels"]}
    target = panels["Observed vs forecast speed"]["targets"][0]
    target["rawSql"] = target["rawSql"].replace("avg(o.speed_kmh)", "avg(o.no_such_column)")
    panels["Flow"]["targets"][0]["rawSql"] = "SELECT 1 AS value"  # no time column for a time series
    long_ago = TimeRange(demo.start - timedelta(days=400), demo.start - timedelta(days=399))
    async with pool.acquire() as con:
        results = {r.title: r for r in await verify_dashboard(con, broken, demo, chosen={"region": [REGION]},
                                                              role=READONLY_ROLE)}
        assert results["Observed vs forecast speed"].status == "failed"
        assert "no_such_column" in results["Observed vs forecast speed"].error
        assert "no_such_column" in results["Observed vs forecast speed"].sql  # the expanded SQL, for the operator
        assert results["Flow"].status == "failed" and "time" in results["Flow"].error
        assert results["Occupancy"].status == "ok"
        old = {r.title: r.status for r in await verify_dashboard(con, doc, long_ago, chosen={"region": [REGION]},
                                                                  role=READONLY_ROLE)}
        assert old.pop("Incidents") == "quiet"  # "No incidents" is a statement, not a gap
        assert old.pop("Segments: speed vs forecast") == "quiet"  # "No segment with coordinates"
        assert set(old.values()) == {"empty"}


async def test_readonly_role_cannot_write_or_read_beyond_the_dashboards(pool, demo):
    async with pool.acquire() as con:
        async with con.transaction():
            await con.execute(f"SET LOCAL ROLE {READONLY_ROLE}")
            assert await con.fetchval("SELECT count(*) FROM readings WHERE time > now() - interval '1 day'") > 0
        for sql in (
            "INSERT INTO readings (time, device, metric, value) VALUES (now(), 1, 1, 1)",
            "UPDATE devices SET name = 'x'",
            "DELETE FROM dead_letters",
            "SELECT * FROM retention_policies",
            "SELECT * FROM api_keys",
            "CREATE TABLE grafana_was_here (x int)",
        ):
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                async with con.transaction():
                    await con.execute(f"SET LOCAL ROLE {READONLY_ROLE}")
                    await con.execute(sql)
        settings = await con.fetchval(
            "SELECT array_to_string(setconfig, ',') FROM pg_db_role_setting s JOIN pg_roles r ON r.oid = s.setrole"
            " WHERE r.rolname = $1", READONLY_ROLE)
        assert "default_transaction_read_only=on" in settings


# ---------------------------------------------------------------------------------------------------
# Push, against a stand-in for Grafana's HTTP API (folders and dashboards/db)


class _FakeGrafana:
    """Just enough of Grafana's API: folders by uid, dashboards stored by uid with overwrite."""

    def __init__(self):
        import http.server
        import threading

        self.folders: dict[str, str] = {}
        self.dashboards: dict[str, dict] = {}
        self.auth: list[str] = []
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _reply(self, code, body):
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                fake.auth.append(self.headers.get("Authorization", ""))
                if self.path.split("?")[0] == "/api/folders":
                    return self._reply(200, [{"uid": u, "title": t} for u, t in fake.folders.items()])
                self._reply(404, {"message": "not found"})

            def do_POST(self):
                fake.auth.append(self.headers.get("Authorization", ""))
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if self.path == "/api/folders":
                    if body["uid"] in fake.folders:
                        return self._reply(409, {"message": "folder exists"})
                    fake.folders[body["uid"]] = body["title"]
                    return self._reply(200, {"uid": body["uid"], "title": body["title"]})
                if self.path == "/api/dashboards/db":
                    d = body["dashboard"]
                    if d["uid"] in fake.dashboards and not body.get("overwrite"):
                        return self._reply(412, {"message": "version-mismatch"})
                    if body["folderUid"] not in fake.folders:
                        return self._reply(400, {"message": "folder not found"})
                    fake.dashboards[d["uid"]] = body
                    return self._reply(200, {"uid": d["uid"], "status": "success"})
                self._reply(404, {"message": "not found"})

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def test_push_creates_a_folder_per_stream_and_overwrites_by_uid():
    from wulian.dashboards.push import folder_uid, push

    fake = _FakeGrafana()
    try:
        planned = push(fake.url, "tok", dry_run=True)
        assert len(planned) == 8 and {a.status for a in planned} == {"planned"}
        assert not fake.folders and not fake.dashboards and not fake.auth  # dry run: no request at all
        first = push(fake.url, "tok")
        assert {a.status for a in first} == {"created-folder+pushed"}
        assert sorted(fake.folders.values()) == sorted(d.folder for d in DASHBOARDS)
        assert set(fake.dashboards) == {d.uid for d in DASHBOARDS}
        body = fake.dashboards["wulian-air"]
        assert body["overwrite"] is True and body["folderUid"] == folder_uid("Air quality")
        assert body["dashboard"]["id"] is None and body["dashboard"]["panels"]
        again = push(fake.url, "tok")  # second push: same folders, dashboards replaced in place
        assert {a.status for a in again} == {"pushed"} and len(fake.dashboards) == 8 and len(fake.folders) == 8
        assert set(fake.auth) == {"Bearer tok"}
    finally:
        fake.close()


RAW_TABLES = {"readings", "devices", "metrics", "vehicle_positions", "traffic_observations", "dead_letters"}


async def test_demo_pipeline_feeds_every_panel(settings, pool):
    """The demo's path, small: a simulated city published through the broker into ingest, then every derive
    job once. No panel may fail; every panel on raw data returns rows; derived panels either return rows or
    are quiet (nothing happened yet: no alert, no complete China day); the only gap allowed is the station
    map, whose coordinates a simulated city does not register."""
    import uuid

    import orjson

    from wulian.ingest.derive_service import discover, run_job_once
    from wulian.ingest.mqtt_client import MqttPublisher
    from wulian.ingest.service import mqtt_params, running_ingestor
    from tests.conftest import wait_until

    region = "dashdemo"
    fleet = build_city({s: 2 for s in Stream}, seed=5)
    now = datetime.now(timezone.utc)
    start_ms = int(now.timestamp() * 1000) - 3 * 3600_000
    sent = 0
    async with running_ingestor(settings, pool) as ing:
        with MqttPublisher(mqtt_params(settings, client_id=f"dash-{uuid.uuid4().hex[:6]}")) as pub:
            for k in range(180):  # three hours, a sample a minute
                for dev in fleet:
                    doc = dev.sample((start_ms + k * 60_000) * 1_000_000)
                    pub.publish(f"wl/{region}/{dev.stream}/DD{dev.device_id}/telemetry", orjson.dumps(doc))
                    sent += 1
            assert pub.wait_acked(60)
        await wait_until(lambda: ing.stats.messages >= sent, timeout=120, event=ing.committed)
    for job in discover(settings):
        await run_job_once(job, pool)
    async with pool.acquire() as con:
        report = await verify(con, rendered(), TimeRange(now - timedelta(hours=6), now), chosen={"region": [region]},
                              role=READONLY_ROLE)
    tables = {(d.uid, p.title): p.tables for d in DASHBOARDS for p in d.panels}
    raw_not_ok = [r.title for r in report.results if tables[(r.dashboard, r.title)] <= RAW_TABLES
                  and r.status != "ok" and r.title not in ("Latest dead letters", "Dead letters by reason")]
    assert report.summary()["failed"] == 0, [(r.title, r.error) for r in report.results if r.status == "failed"]
    assert not raw_not_ok
    assert [r.title for r in report.results if r.status == "empty"] == ["Stations: latest hourly AQI"]
    ok = {r.title for r in report.results if r.status == "ok"}
    assert {"AQI per station", "City AQI", "Station class along the river", "Hourly concentration vs permit limit",
            "Valid-hour rate per source"} <= ok  # derived hourly tables the jobs filled


# ---------------------------------------------------------------------------------------------------
# Registry streams (issue 19): a dashboard from a stream's spec, no code


def test_shipped_profiles_have_their_dashboards_built():
    from wulian.core.streams_profiles import PROFILES
    from wulian.dashboards.render import render
    from wulian.dashboards.streams import FOLDER, profile_defs, stream_dashboards

    dashes = stream_dashboards(profile_defs())
    assert [d.uid for d in dashes] == [f"wulian-stream-{n}" for n in PROFILES]
    for d in dashes:
        path = OUT_DIR / FOLDER / file_name(d)
        assert path.read_text(encoding="utf-8") == to_json_text(render(d)), f"run `wulian dashboards build` ({path})"
        assert d.tables <= set(readonly_tables())  # the read-only role already reads them


async def test_a_stream_created_through_the_api_gets_a_verified_dashboard(api, pool, test_dsn, tmp_path, capsys):
    import uuid

    from wulian.api.auth import create_key
    from wulian.cli.commands import dashboards
    from tests.cli import run_command

    name = f"dash{uuid.uuid4().hex[:6]}"
    spec = {"name": name, "title": "温室", "metrics": {"air_temp": {"unit": "°C", "min": -30, "max": 60}},
            "dashboard": {"title": "温室", "panels": [{"metric": "air_temp", "title": "气温"}]}}
    async with pool.acquire() as con:
        admin = await create_key(con, name="dash-admin", role="admin", regions=[])
    r = await api.post("/v1/streams", json=spec, headers={"Authorization": f"Bearer {admin}"})
    assert r.status_code == 201, r.text
    now = datetime.now(timezone.utc).replace(microsecond=0)
    async with pool.acquire() as con:
        dev = await con.fetchval("INSERT INTO devices (device_id, region, stream) VALUES ($1, 'dashreg', $2)"
                                 " RETURNING id", f"D{name}", name)
        metric = await con.fetchval("INSERT INTO metrics (name, stream) VALUES ('air_temp', $1) ON CONFLICT (name)"
                                    " DO UPDATE SET name = EXCLUDED.name RETURNING id", name)
        await con.executemany("INSERT INTO readings (time, device, metric, value, flag) VALUES ($1, $2, $3, $4, 'N')",
                              [(now - timedelta(minutes=k), dev, metric, 20.0 + k) for k in range(10)])
    uid = f"wulian-stream-{name}"
    import asyncio

    assert await asyncio.to_thread(run_command, dashboards, ["dashboards", "verify", "--dsn", test_dsn, "--dashboard", uid, "--json",
                                    "--details", "--var", "region=dashreg", "--from", "now-1h"]) == 0
    out = json.loads(capsys.readouterr().out)
    (panel,) = out["results"]
    assert (panel["dashboard"], panel["title"], panel["status"], panel["rows"]) == (uid, "气温", "ok", 10)
    assert await asyncio.to_thread(run_command, dashboards, ["dashboards", "build", "--dsn", test_dsn, "--out", str(tmp_path)]) == 0
    capsys.readouterr()
    doc = json.loads((tmp_path / "Streams" / f"{uid}.json").read_text(encoding="utf-8"))
    assert doc["panels"][0]["title"] == "气温" and f"d.stream = '{name}'" in doc["panels"][0]["targets"][0]["rawSql"]
