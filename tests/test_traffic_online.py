"""Traffic online: Los-loop replayed through MQTT and ingest, the traffic job (fit, forecasts, incidents,
alerts, restart, idempotency), the traffic API, and the pure helpers behind them."""
import asyncio
import time
import uuid
from dataclasses import replace
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from wulian.core.timebase import china_day, day_start_ns
from wulian.core.traffic.system_rules import TRAFFIC_DETECTOR_FAULT, TRAFFIC_INCIDENT
from wulian.api.auth import create_key
from wulian.core.traffic.incidents import FAULT, RAISE, IncidentDetector, IncidentParams
from wulian.core.traffic.online import (
    OnlineParams, adjacency_matrix, carry_detector, dense_grid, detector_from_bytes,
    detector_to_bytes, fit_online, last_complete_bin, parse_incident_spec,
)
from wulian.ingest.derive_service import discover, run_job_once
from wulian.core.timebase import ns_to_dt
from wulian.ingest.jobs.traffic import TrafficJob
from wulian.ingest.service import mqtt_params, running_ingestor
from wulian.simulators.traffic_replay import (
    HISTORY_CHUNK, ReplayPlan, default_start_ns, history_messages, load_replay, neighbourhood, register_segments,
    resolve_segment, run_replay, with_incident,
)
from tests.conftest import wait_until

NS = 1_000_000_000
STEP = 300 * NS
N_SEG = 24
HIST = 2 * 288  # two days of history before the live rows (row 576 = Saturday 00:00 in the data)
INC_ROW = HIST + 20  # the injected incident starts here...
INC_LEN = 8  # ...and lasts 40 minutes, then recovers over 3 rows
LAST = INC_ROW + INC_LEN + 12
T_NOW = 1_795_658_400 * NS  # a fixed "now" for the pure helpers


# -- pure helpers ----------------------------------------------------------------------------------

def test_last_complete_bin_waits_for_the_lag():
    t = 1_795_658_400 * NS  # a 5-minute boundary
    assert last_complete_bin(t + 60 * NS, 300, 60) == t - STEP  # [t-5m, t) ended 60 s ago: complete
    assert last_complete_bin(t + 59 * NS, 300, 60) == t - 2 * STEP


def test_dense_grid_places_rows_and_drops_the_rest():
    g = dense_grid(np.array([0, STEP, 5 * STEP, -STEP, STEP]), np.array([0, 1, 0, 0, -1]),
                   np.array([1.0, 2.0, 3.0, 4.0, 5.0]), 0, 3, 2, 300)
    assert g[0, 0] == 1.0 and g[1, 1] == 2.0
    assert np.isnan(g).sum() == 4  # the bin outside, the one before, and the unknown column are dropped


def test_adjacency_matrix_keeps_direction_and_ignores_outsiders():
    a = adjacency_matrix(np.array([10, 20, 30]), np.array([10, 20, 99]), np.array([20, 10, 10]),
                         np.array([0.5, 0.25, 1.0]))
    assert a[0, 1] == 0.5 and a[1, 0] == 0.25 and a[0, 2] == 0.0 and np.all(np.diag(a) == 1.0)


def _detector(n, k=5.0):
    top = np.array([[i] for i in range(n)], np.int32)  # no neighbours: lone drops raise after alone_after
    params = IncidentParams(k=k, min_drop=5.0, step_s=300, utc_offset_s=0, alone_after=2)
    return IncidentDetector(np.ones((24, n)), np.full(n, 200.0), top, params)


def test_detector_state_survives_bytes_and_a_refit_by_device_id():
    det = _detector(2)
    for k in range(2):  # segment 1 (device 20) raises
        det.update_bin(k * STEP, np.array([50.0 + k, 10.0 + k]), np.array([50.0, 50.0]))
    det = detector_from_bytes(detector_to_bytes(det))
    assert det.active.tolist() == [False, True]
    moved = carry_detector(det, [10, 20], [20, 30, 10], _detector(3, k=7.0))
    assert moved.active.tolist() == [True, False, False]  # device 20 is now column 0
    assert moved.k == 7.0  # the new model's threshold
    # the carried open incident clears on recovery instead of being raised again
    kinds = []
    for k in (2, 3):
        kinds += moved.update_bin(k * STEP, np.array([50.0 + k, 60.0, 61.0 - k]), np.full(3, 50.0)).kind.tolist()
    assert kinds == [-1]
    with pytest.raises(ValueError, match="not a saved incident detector"):
        detector_from_bytes(b"an earlier format")


def test_incident_spec():
    assert parse_incident_spec("767541@300") == ("767541", 300)
    assert parse_incident_spec("los-1@0") == ("los-1", 0)
    for bad in ("767541", "@3", "x@y", "x@-1"):
        with pytest.raises(ValueError):
            parse_incident_spec(bad)


@pytest.fixture(scope="module")
def replay():
    return load_replay(sensors=N_SEG)  # the packaged Los-loop week


def test_replay_subset_is_connected_in_kmh(replay):
    assert len(replay.segment_ids) == N_SEG and replay.adjacency.shape == (N_SEG, N_SEG)
    assert all(s.startswith("los-") for s in replay.segment_ids)
    assert 1.6 <= np.nanmax(replay.speeds_kmh) / 70.0 <= 1.61  # Los-loop tops out at 70 mph
    off = replay.adjacency - np.diag(np.diag(replay.adjacency))
    assert np.all((off > 0).sum(axis=1) >= 1)  # every kept sensor has a road link inside the subset
    assert neighbourhood(np.eye(3), 0, 2).tolist() == [0, 1]  # no links: topped up by index


def test_incident_injection_and_segment_names(replay):
    seg = resolve_segment(replay, replay.sensor_ids[3])
    assert seg == 3 and resolve_segment(replay, replay.segment_ids[3]) == 3 and resolve_segment(replay, "3") == 3
    with pytest.raises(ValueError):
        resolve_segment(replay, "nope")
    hit = with_incident(replay, seg, 100, duration=6)
    assert np.allclose(hit.speeds_kmh[100:106, seg], 0.35 * replay.speeds_kmh[100:106, seg])
    assert hit.affected[:, seg].sum() == 9 and hit.affected.any(axis=0).sum() > 1  # it spread upstream
    assert np.array_equal(hit.speeds_kmh[:100], replay.speeds_kmh[:100])


def test_replay_is_stamped_from_a_china_thursday_in_the_past(replay):
    start = default_start_ns(T_NOW, replay.rows)
    local_day = china_day(start)
    assert start == day_start_ns(local_day) and (local_day + 3) % 7 == 3  # Thursday midnight, China time
    assert start + replay.rows * STEP <= T_NOW < start + (replay.rows * 300 + 7 * 86_400) * NS
    msgs = list(history_messages(replay, start, range(0, 1500)))
    assert {s for s, _ in msgs} == set(range(N_SEG)) and len(msgs) == 2 * N_SEG  # 1500 rows: 1000 + 500
    assert HISTORY_CHUNK == 1000


# -- end to end --------------------------------------------------------------------------------------

@pytest.fixture
async def keys(pool):
    region = f"t{uuid.uuid4().hex[:6]}"
    async with pool.acquire() as con:
        return {
            "region": region,
            "regulator": await create_key(con, name="traffic-reg", role="regulator", regions=[region]),
            "other": await create_key(con, name="traffic-other", role="operator", regions=["elsewhere"]),
        }


def h(key):
    return {"Authorization": f"Bearer {key}"}


async def _count(pool, sql, *args):
    async with pool.acquire() as con:
        return await con.fetchval(sql, *args)


async def test_replay_fit_forecast_incident_api_restart(settings, pool, api, keys, replay):
    region = keys["region"]
    # a collapse on a well-connected segment in the small hours of Saturday (free-flowing traffic)
    seg = int(np.argmax((replay.adjacency > 0).sum(axis=1)))
    live = with_incident(replace(replay, segment_ids=tuple(f"{region}-{x}" for x in replay.sensor_ids)), seg,
                         INC_ROW, duration=INC_LEN)
    # meanwhile a detector far from the incident dies (reads 0): a fault alert, never an incident
    dead = int(np.flatnonzero(~live.affected.any(axis=0))[-1])
    speeds = live.speeds_kmh.copy()
    speeds[INC_ROW:INC_ROW + INC_LEN, dead] = 0.0
    live = replace(live, speeds_kmh=speeds)
    async with pool.acquire() as con:
        reg = await register_segments(con, region, live)
        assert reg == await register_segments(con, region, live)  # idempotent
    assert reg["segments"] == N_SEG and reg["links"] > N_SEG
    start = default_start_ns(time.time_ns(), LAST + 1)
    expected = int(np.isfinite(live.speeds_kmh[: LAST + 1]).sum())
    plan = ReplayPlan(region=region, start_ns=start, n_rows=LAST + 1, history_rows=HIST, speedup=0,
                      prefix=settings.mqtt.topic_prefix)
    async with running_ingestor(settings, pool):
        out = await asyncio.to_thread(run_replay, mqtt_params(settings, f"replay-{region}"), live, plan)
        assert out["acked"] == out["published"] and out["last_row"] == LAST
        n_obs = "SELECT count(*) FROM traffic_observations o JOIN devices d ON d.id = o.device WHERE d.region = $1"

        async def all_in():
            return await _count(pool, n_obs, region) == expected
        await wait_until(all_in, timeout=60)

    def now_after(row):  # the job's clock once data row ``row`` is complete (and the 60 s lag has passed)
        return start + (row + 1) * STEP + 60 * NS

    params = OnlineParams(backfill_bins=12)
    job = TrafficJob(params)
    # 1. first run: fit on the two days, forecast the last 12 bins for 12 horizons
    stats = await run_job_once(job, pool, now_after(HIST - 1))
    r = stats["regions"][region]
    assert r["fitted"] == 1 and r["bins"] == 12 and r["forecasts"] == 12 * 12 * N_SEG and r["raised"] == 0
    async with pool.acquire() as con:
        model = await con.fetchrow("SELECT id, segments, adjacency_source, data_to, bands FROM traffic_models"
                                   " WHERE region = $1", region)
        assert len(model["segments"]) == N_SEG and model["adjacency_source"] == "road_links"
        assert model["data_to"] == ns_to_dt(start + (HIST - 1) * STEP)
        assert min(model["bands"]) > 0
        n_fc = await con.fetchval("SELECT count(*) FROM traffic_forecasts WHERE model_id = $1", model["id"])
    assert n_fc == 12 * 12 * N_SEG

    # the API: latest forecast of a segment at 15 minutes, every horizon, all segments; 4xx
    dev = live.segment_ids[seg]
    issued = ns_to_dt(start + (HIST - 1) * STEP)
    rq = await api.get("/v1/traffic/forecast", params={"segment": dev, "horizon": 15}, headers=h(keys["regulator"]))
    assert rq.status_code == 200, rq.text
    (f,) = rq.json()["data"]
    assert f["horizon_min"] == 15 and f["segment"] == dev and f["region"] == region
    assert datetime.fromisoformat(f["issued_at"]) == issued
    assert datetime.fromisoformat(f["time"]) == issued + timedelta(minutes=15)
    assert 5.0 < f["speed_kmh"] < 130.0
    rq = await api.get("/v1/traffic/forecast", params={"segment": dev}, headers=h(keys["regulator"]))
    assert [x["horizon_min"] for x in rq.json()["data"]] == list(range(5, 65, 5))
    rq = await api.get("/v1/traffic/forecast", params={"region": region}, headers=h(keys["regulator"]))
    assert rq.json()["count"] == N_SEG and {x["horizon_min"] for x in rq.json()["data"]} == {15}
    for bad in (7, 0, 65):
        rq = await api.get("/v1/traffic/forecast", params={"segment": dev, "horizon": bad},
                           headers=h(keys["regulator"]))
        assert rq.status_code == 422 and "horizon" in rq.json()["message"]
    rq = await api.get("/v1/traffic/forecast", params={"segment": "no-such-segment"}, headers=h(keys["regulator"]))
    assert rq.status_code == 404 and "not found" in rq.json()["message"]
    rq = await api.get("/v1/traffic/forecast", params={"segment": dev}, headers=h(keys["other"]))
    assert rq.status_code == 404  # another region's key does not learn that the segment exists
    rq = await api.get("/v1/traffic/forecast", params={"region": region}, headers=h(keys["other"]))
    assert rq.json()["count"] == 0
    assert (await api.get("/v1/traffic/forecast", params={"segment": dev})).status_code == 401

    # 2. a restarted job: the model is reloaded, not refitted; it carries on from the watermark
    job = discover(settings, {"traffic"})[0]
    job.params = params
    stats = await run_job_once(job, pool, now_after(INC_ROW - 1))
    r = stats["regions"][region]
    assert r["fitted"] == 0 and r["model_id"] == model["id"] and r["bins"] == INC_ROW - HIST
    assert r["raised"] == 0  # clean data: no false alarm on these bins

    # 3. the incident: raised on an affected segment within a few bins, with an alert
    stats = await run_job_once(job, pool, now_after(INC_ROW + 5))
    assert stats["regions"][region]["raised"] >= 1
    async with pool.acquire() as con:
        incs = await con.fetch(
            "SELECT i.*, d.device_id FROM traffic_incidents i JOIN devices d ON d.id = i.device"
            " WHERE i.region = $1 ORDER BY detected_at", region)
        alerts = await con.fetch("SELECT * FROM alerts WHERE region = $1 AND rule_id = $2", region,
                                 TRAFFIC_INCIDENT.rule_id)
    cols = {live.segment_ids.index(i["device_id"]) for i in incs}
    rows = [(i["detected_at"] - ns_to_dt(start)).total_seconds() // 300 for i in incs]
    assert all(live.affected[int(k), c] for k, c in zip(rows, [live.segment_ids.index(i["device_id"]) for i in incs]))
    assert seg in cols and all(i["state"] == "open" for i in incs)
    first = incs[0]
    assert first["min_residual"] < -first["band_kmh"] and first["alert_id"] is not None
    assert {a["device"] for a in alerts} == {i["device"] for i in incs}
    assert live.segment_ids[dead] not in {i["device_id"] for i in incs}
    async with pool.acquire() as con:
        faults = await con.fetch("SELECT a.*, d.device_id AS name FROM alerts a JOIN devices d ON d.id = a.device"
                                 " WHERE a.region = $1 AND a.rule_id = $2", region, TRAFFIC_DETECTOR_FAULT.rule_id)
    assert [f["name"] for f in faults] == [live.segment_ids[dead]]
    assert faults[0]["title"] == "traffic detector fault (zero)" and faults[0]["state"] == "active"
    # its zeros are held out of the forecasts: the next bins' forecasts come from its profile and links
    async with pool.acquire() as con:
        dead_fc = await con.fetch(
            "SELECT f.speed_kmh FROM traffic_forecasts f JOIN devices d ON d.id = f.device"
            " WHERE d.device_id = $1 AND f.horizon_steps = 1 AND f.issued_at >= $2",
            live.segment_ids[dead], ns_to_dt(start + INC_ROW * STEP))
    before = float(np.nanmedian(live.speeds_kmh[INC_ROW - 12:INC_ROW, dead]))
    assert len(dead_fc) == 6 and min(r["speed_kmh"] for r in dead_fc) > 0.5 * before
    assert all(a["state"] == "active" and a["title"] == "traffic incident" and a["stream"] == "traffic"
               for a in alerts)

    # 4. idempotent: the same clock again does nothing; a lost watermark re-does the bins without duplicates
    n_fc = await _count(pool, "SELECT count(*) FROM traffic_forecasts WHERE model_id = $1", model["id"])
    again = (await run_job_once(job, pool, now_after(INC_ROW + 5)))["regions"][region]
    assert again["bins"] == 0 and again["forecasts"] == 0
    async with pool.acquire() as con:
        await con.execute("DELETE FROM job_watermarks WHERE job = $1", f"traffic/{region}")
    again = (await run_job_once(job, pool, now_after(INC_ROW + 5)))["regions"][region]
    assert again["bins"] == 12 and again["forecasts"] == 0 and again["raised"] == 0
    assert await _count(pool, "SELECT count(*) FROM traffic_forecasts WHERE model_id = $1", model["id"]) == n_fc
    assert await _count(pool, "SELECT count(*) FROM traffic_incidents WHERE region = $1", region) == len(incs)

    # 5. recovery clears the incidents and their alerts; a clock far ahead of the data stops at the bin
    # before the newest observation (how a time-compressed replay stamped in the past is followed)
    stats = await run_job_once(job, pool, now_after(LAST) + 86_400 * NS)
    assert stats["regions"][region]["cleared"] >= 1
    assert datetime.fromisoformat(stats["regions"][region]["upto"]) == ns_to_dt(start + (LAST - 1) * STEP)
    async with pool.acquire() as con:
        main = await con.fetchrow("SELECT * FROM traffic_incidents WHERE device = (SELECT id FROM devices"
                                  " WHERE device_id = $1)", dev)
        alert = await con.fetchrow("SELECT state FROM alerts WHERE id = $1", main["alert_id"])
    assert main["state"] == "cleared" and main["ended_at"] > main["detected_at"] and alert["state"] == "cleared"

    # the queue's spread may raise more segments after step 3 (a link confirms a bin or two after it
    # slows); every incident is still on a segment the injection affected, at a row it affected
    async with pool.acquire() as con:
        incs = await con.fetch(
            "SELECT i.*, d.device_id FROM traffic_incidents i JOIN devices d ON d.id = i.device"
            " WHERE i.region = $1 ORDER BY detected_at", region)
    rows = [(i["detected_at"] - ns_to_dt(start)).total_seconds() // 300 for i in incs]
    assert all(live.affected[int(k), live.segment_ids.index(i["device_id"])] for k, i in zip(rows, incs))

    # the incidents API: region scope, filters, time range, 4xx
    rq = await api.get("/v1/traffic/incidents", params={"region": region}, headers=h(keys["regulator"]))
    assert rq.status_code == 200 and rq.json()["count"] == len(incs)
    body = rq.json()["data"]
    assert {x["segment"] for x in body} == {i["device_id"] for i in incs}
    rq = await api.get("/v1/traffic/incidents", params={"segment": dev, "state": "cleared"},
                       headers=h(keys["regulator"]))
    (x,) = rq.json()["data"]
    assert x["alert_id"] == main["alert_id"] and x["min_residual_kmh"] < 0
    t_before = ns_to_dt(start + (INC_ROW - 10) * STEP).isoformat()
    rq = await api.get("/v1/traffic/incidents", params={"region": region, "until": t_before},
                       headers=h(keys["regulator"]))
    assert rq.json()["count"] == 0
    rq = await api.get("/v1/traffic/incidents", params={"region": region, "limit": 1}, headers=h(keys["regulator"]))
    assert rq.json()["count"] == 1 and (rq.json()["next_cursor"] is not None) == (len(incs) > 1)
    rq = await api.get("/v1/traffic/incidents", params={"since": t_before, "until": t_before},
                       headers=h(keys["regulator"]))
    assert rq.status_code == 422 and "'to' must be after 'from'" in rq.json()["message"]
    rq = await api.get("/v1/traffic/incidents", params={"state": "bogus"}, headers=h(keys["regulator"]))
    assert rq.status_code == 422
    rq = await api.get("/v1/traffic/incidents", headers=h(keys["other"]))
    assert all(x["region"] != region for x in rq.json()["data"])
    rq = await api.get("/v1/traffic/incidents", params={"segment": dev}, headers=h(keys["other"]))
    assert rq.status_code == 404


def test_fit_online_fits_flow_only_where_there_is_enough():
    rng = np.random.default_rng(3)
    rows, n = 3 * 288, 4
    tod = np.arange(rows) % 288 / 288.0
    speed = 60.0 - 20.0 * np.exp(-(((tod - 0.33) / 0.04) ** 2))[:, None] + rng.normal(0, 1.0, (rows, n))
    flow = 1500.0 - 10.0 * (60.0 - speed) + rng.normal(0, 30.0, (rows, n))
    adjacency = np.eye(n) + np.eye(n, k=1) * 0.5 + np.eye(n, k=-1) * 0.5
    params = OnlineParams(utc_offset_s=0)
    fitted = fit_online(speed, flow, adjacency, 0, params)
    assert fitted.flow is not None and fitted.bands.shape == (n,) and np.all(fitted.bands > 0)
    out = fitted.flow.forecast(flow[-12:], (rows - 1) * STEP)
    assert out.shape == (12, n) and np.all(np.abs(out - 1500.0) < 400.0)
    sparse = np.full_like(flow, np.nan)
    sparse[:100, 0] = 1500.0
    assert fit_online(speed, sparse, adjacency, 0, params).flow is None


async def test_simulate_traffic_cli_registers_and_replays(settings, pool, monkeypatch, capsys):
    from wulian.cli.commands import simulate_traffic

    region = f"t{uuid.uuid4().hex[:6]}"
    settings.traffic.min_drop_kmh = 30.0
    monkeypatch.setattr(simulate_traffic, "get_settings", lambda: settings)
    assert discover(settings, {"traffic"})[0].params.min_drop_kmh == 30.0
    job = discover(settings.model_copy(update={"traffic": settings.traffic.model_copy(update={"net_hidden": 64})}),
                   {"traffic"})[0]
    assert job.params.forecaster_params().net_hidden == 64 and job.params.flow_params().net_hidden == 0
    args = ["simulate-traffic", "--region", region, "--prefix", f"{region}-", "--sensors", "3",
            "--rows", "2",
            "--first-row", "10", "--speedup", "0", "--start", "2026-11-20T00:00", "--incident", "0@11",
            "--incident-duration", "1"]
    import argparse

    parser = argparse.ArgumentParser()
    simulate_traffic.register(parser.add_subparsers())
    ns = parser.parse_args(args)
    async with running_ingestor(settings, pool):
        assert await asyncio.to_thread(ns.func, ns) == 0

        async def landed():
            return await _count(pool, "SELECT count(*) FROM traffic_observations o JOIN devices d ON d.id = o.device"
                                      " WHERE d.region = $1", region) == 6
        await wait_until(landed, timeout=30)
    replay = load_replay(sensors=3, prefix=f"{region}-")
    async with pool.acquire() as con:
        rows = await con.fetch(
            "SELECT d.device_id, d.attrs->>'sensor' AS sensor, o.time, o.speed_kmh FROM traffic_observations o"
            " JOIN devices d ON d.id = o.device WHERE d.region = $1 ORDER BY o.time, d.device_id", region)
        links = await con.fetchval("SELECT count(*) FROM road_links l JOIN devices d ON d.id = l.a WHERE d.region = $1",
                                   region)
    assert links >= 2 and rows[0]["device_id"] == f"{region}-{rows[0]['sensor']}"
    row0 = datetime(2026, 11, 19, 16, 0, tzinfo=timezone.utc)  # 00:00 China time
    assert rows[0]["time"] == row0 + timedelta(minutes=50)  # data row 10
    col = replay.segment_ids.index(rows[0]["device_id"])
    assert rows[0]["speed_kmh"] == pytest.approx(replay.speeds_kmh[10, col], abs=0.01)
    hit = [r for r in rows if r["time"] == row0 + timedelta(minutes=55) and r["device_id"] == replay.segment_ids[0]]
    assert hit[0]["speed_kmh"] == pytest.approx(0.35 * replay.speeds_kmh[11, 0], abs=0.01)  # the incident
    assert '"published": 6' in capsys.readouterr().out
    async with pool.acquire() as con:  # device ids are global: the same segments cannot join another region
        with pytest.raises(ValueError, match="another region"):
            await register_segments(con, "elsewhere", replay)


async def _segment_chain(pool, region: str, weights: tuple[float, ...]) -> tuple[list[str], list[int]]:
    """Traffic detectors ``<region>-seg0..n`` linked in a chain both ways, ``weights[i]`` between i and i+1;
    their names and ids."""
    names = [f"{region}-seg{k}" for k in range(len(weights) + 1)]
    async with pool.acquire() as con:
        ids = [await con.fetchval("INSERT INTO devices (device_id, region, stream) VALUES ($1, $2, 'traffic')"
                                  " RETURNING id", n, region) for n in names]
        await con.executemany("INSERT INTO road_links (a, b, weight) VALUES ($1, $2, $3)",
                              [(x, y, w) for k, w in enumerate(weights)
                               for x, y in ((ids[k], ids[k + 1]), (ids[k + 1], ids[k]))])
    return names, ids


async def test_flow_forecasts_and_a_new_segment_triggers_a_refit(pool, api, keys):
    """Observations written straight into the table (the job does not care how they came): three segments
    with speed and flow for two days, then a fourth starts reporting."""
    region = keys["region"]
    rng = np.random.default_rng(5)
    names, ids = await _segment_chain(pool, region, (0.8, 0.6, 0.7))
    t0 = (time.time_ns() // STEP - 4 * 288) * STEP
    hist, extra = 2 * 288, 30

    def rows(seg, first, n):
        out = []
        for k in range(first, first + n):
            tod = (k % 288) / 288.0
            jam = 25.0 * np.exp(-(((tod - 0.35) / 0.03) ** 2))
            speed = 65.0 - jam + rng.normal(0, 1.5)
            out.append((ns_to_dt(t0 + k * STEP), ids[seg], speed, 1400.0 - 20.0 * jam + rng.normal(0, 40), 0.1))
        return out

    async def write(records):
        async with pool.acquire() as con:
            await con.copy_records_to_table("traffic_observations", records=records,
                                            columns=["time", "device", "speed_kmh", "flow_vph", "occupancy"])

    await write([r for s in range(3) for r in rows(s, 0, hist)])
    job = TrafficJob(OnlineParams(backfill_bins=2))
    r = (await run_job_once(job, pool, t0 + hist * STEP + 60 * NS))["regions"][region]
    assert r["fitted"] == 1 and r["forecasts"] == 2 * 12 * 3
    rq = await api.get("/v1/traffic/forecast", params={"segment": names[1], "horizon": 60},
                       headers=h(keys["regulator"]))
    (f,) = rq.json()["data"]
    assert 800.0 < f["flow_vph"] < 2000.0 and 30.0 < f["speed_kmh"] < 80.0
    rq = await api.get("/v1/traffic/forecast", params={"segment": names[3]}, headers=h(keys["regulator"]))
    assert rq.status_code == 404 and "no forecast" in rq.json()["message"]  # never reported: not in the model
    async with pool.acquire() as con:
        flows = await con.fetchval("SELECT count(flow_vph) FROM traffic_forecasts WHERE device = ANY($1)", ids)
    assert flows == 2 * 12 * 3

    # the fourth segment reports for 2.5 hours: the next run refits with it (an hour after the last fit)
    await write([r for s in range(4) for r in rows(s, hist, extra)])
    r = (await run_job_once(job, pool, t0 + (hist + extra) * STEP + 60 * NS))["regions"][region]
    assert r["fitted"] == 1 and r["bins"] == extra
    async with pool.acquire() as con:
        models = await con.fetch("SELECT segments FROM traffic_models WHERE region = $1 ORDER BY id", region)
    assert [len(m["segments"]) for m in models] == [3, 4]
    rq = await api.get("/v1/traffic/forecast", params={"segment": names[3], "horizon": 5},
                       headers=h(keys["regulator"]))
    assert rq.status_code == 200 and rq.json()["data"][0]["speed_kmh"] > 0


def test_replay_never_stamps_the_future_and_paces_rows(settings, replay):
    region = f"t{uuid.uuid4().hex[:6]}"
    start = 1_795_658_400 * NS
    clock_now = start + STEP + 100 * NS  # rows 0 and 1 are past; row 2 is 200 s ahead of the clock
    slept = []
    plan = ReplayPlan(region=region, start_ns=start, n_rows=3, speedup=1000.0, prefix=settings.mqtt.topic_prefix)
    out = run_replay(mqtt_params(settings, f"pace-{region}"), replay, plan, clock=lambda: clock_now,
                     sleep=slept.append)
    assert out["published"] == 3 * N_SEG and out["acked"] == out["published"] and out["last_row"] == 2
    waits = [s for s in slept if s > 1.0]
    assert waits == [pytest.approx(200.0)]  # only row 2 waited, for its stamp to come
    assert all(s <= 0.003 for s in slept if s <= 1.0)  # the rest is pacing: 3 rows at 1000 rows/s


async def test_with_a_net_the_detector_compares_with_the_forecasts_without_it(pool, keys, monkeypatch):
    """With the residual net on, the job stores the net's forecasts but feeds the detector those the model
    would make without it (``DETECTOR_NET``), also for the bins whose forecasts an earlier run issued
    (made again from the grid): runs of 2, 5 and 1 bins. Fails with the stored forecasts."""
    from wulian.core.traffic.forecaster import TrafficForecaster

    region = keys["region"]
    rng = np.random.default_rng(9)
    names, ids = await _segment_chain(pool, region, (0.8, 0.6))
    t0 = (time.time_ns() // STEP - 4 * 288) * STEP
    hist, extra = 2 * 288, 9
    tod = (np.arange(hist + extra) % 288) / 288.0
    jam = 25.0 * np.exp(-(((tod - 0.35) / 0.03) ** 2))[:, None] * np.array([1.0, 0.7, 0.4])
    speeds = 65.0 - jam + rng.normal(0, 2.0, (hist + extra, 3))
    async with pool.acquire() as con:
        await con.copy_records_to_table(
            "traffic_observations", columns=["time", "device", "speed_kmh"],
            records=[(ns_to_dt(t0 + k * STEP), ids[s], float(speeds[k, s])) for k in range(hist + extra)
                     for s in range(3)])
    seen: dict[int, np.ndarray] = {}
    update_bin = IncidentDetector.update_bin

    def spy(det, ts_ns, observed, forecast, *args, **kwargs):
        seen[int(ts_ns)] = np.array(forecast, np.float64)
        return update_bin(det, ts_ns, observed, forecast, *args, **kwargs)

    monkeypatch.setattr(IncidentDetector, "update_bin", spy)
    job = TrafficJob(OnlineParams(backfill_bins=2, net_hidden=64))
    for row in (hist, hist + 5, hist + 6, hist + 7, hist + 8):  # runs of 2, 5, 1, 1, 1 bins
        r = (await run_job_once(job, pool, t0 + row * STEP + 60 * NS))["regions"][region]
        assert r["fitted"] == (row == hist)
    async with pool.acquire() as con:
        model = TrafficForecaster.from_bytes(await con.fetchval("SELECT speed_model FROM traffic_models"
                                                                " WHERE region = $1", region))
        obs = await con.fetch("SELECT time, device, speed_kmh::float8 AS v FROM traffic_observations"
                              " WHERE device = ANY($1)", ids)
        stored = {(r["issued_at"], r["device"]): r["v"] for r in await con.fetch(
            "SELECT issued_at, device, speed_kmh::float8 AS v FROM traffic_forecasts WHERE device = ANY($1)"
            " AND horizon_steps = 3", ids)}
    assert model.net is not None
    grid = np.full((hist + extra, 3), np.nan)
    for o in obs:
        grid[round((o["time"] - ns_to_dt(t0)).total_seconds() / 300), ids.index(o["device"])] = o["v"]
    assert sorted(seen) == [t0 + k * STEP for k in range(hist - 2, hist + 8)]
    gap = []
    for t, got in seen.items():
        issued = (t - t0) // STEP - 3
        window, t_issue = grid[issued - 11:issued + 1], t0 + issued * STEP
        np.testing.assert_allclose(got, model.forecast(window, t_issue, net=False)[2], rtol=1e-9)
        published = model.forecast(window, t_issue)[2]
        if issued >= hist - 2:  # issued by a run (the first run's first bins: before it)
            np.testing.assert_allclose([stored[(ns_to_dt(t_issue), d)] for d in ids], published, rtol=1e-5)
            gap.append(np.abs(published - got).max())
    assert len(gap) == 7 and min(gap) > 1e-3, gap  # the net moved every one of these forecasts
