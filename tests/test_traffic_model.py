"""Traffic forecaster, the published evaluation protocol, and incident detection."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from wulian.core.traffic.evaluation import (
    historical_average,
    load_dataset,
    los_start_ns,
    persistence_forecast,
    pooled_metrics,
    protocol_windows,
    split_rows,
)
from wulian.core.traffic.forecaster import TrafficForecaster, TrafficForecastParams, build_graph, time_slots
from wulian.core.traffic.incidents import (
    CLEAR,
    RAISE,
    IncidentDetector,
    IncidentParams,
    evaluate_incidents,
    inject_incident,
    learn_bands,
    replay,
)
from wulian.simulators.los_loop import load_los_loop

STEP_S = 300
NS = 1_000_000_000


# -- protocol and metrics on hand-checked arrays -------------------------------------------------

def test_split_and_window_counts_follow_the_readme():
    assert split_rows(2016, 0.8) == 1612
    test = np.arange(404 * 2, dtype=float).reshape(404, 2)
    for pre, expected in ((3, 389), (6, 386), (12, 380)):
        x, y = protocol_windows(test, pre)
        assert x.shape == (expected, 12, 2) and y.shape == (expected, pre, 2)
    x, y = protocol_windows(np.arange(20.0)[:, None], 3)
    assert x.shape[0] == 5  # 20 - 12 - 3: the last possible window is dropped
    assert x[0, :, 0].tolist() == list(range(12)) and y[0, :, 0].tolist() == [12, 13, 14]
    assert x[-1, -1, 0] == 15 and y[-1, -1, 0] == 18


def test_pooled_metrics_by_hand():
    y = np.array([[1.0, 2.0], [3.0, 4.0]])
    y_hat = np.array([[1.0, 2.0], [3.0, 2.0]])
    m = pooled_metrics(y, y_hat)
    assert m.rmse == pytest.approx(1.0)  # sqrt(4 / 4)
    assert m.mae == pytest.approx(0.5)
    assert m.accuracy == pytest.approx(1.0 - 2.0 / np.sqrt(30.0))  # ||e||_F = 2, ||Y||_F = sqrt(30)
    assert m.r2 == pytest.approx(1.0 - 4.0 / 5.0)  # one global mean 2.5 -> total sum of squares 5


def test_baselines():
    x = np.arange(24.0).reshape(2, 12, 1)
    p = persistence_forecast(x, 3)
    assert p.shape == (2, 3, 1) and p[0, :, 0].tolist() == [11.0] * 3 and p[1, 0, 0] == 23.0
    train = np.array([[1.0], [2.0], [3.0], [5.0]])
    table = historical_average(train, np.array([0, 1, 0, 1]), 3)
    assert table[:, 0].tolist() == [2.0, 3.5, 2.75]  # slot 2 never seen: the overall mean


def test_time_slots_use_local_time_and_day_type():
    # 2012-03-03 00:00 PST is a Saturday; 23:55 the evening before is a Friday
    sat = los_start_ns() + 2 * 86_400 * NS
    slot, _, day_type = time_slots(np.array([sat, sat - STEP_S * NS]), STEP_S, -8 * 3600)
    assert slot.tolist() == [0, 287] and day_type.tolist() == [1, 0]


# -- a small synthetic road: fast, deterministic checks ---------------------------------------

def synthetic_road(days=8, n=6, seed=1):
    """A chain of segments with a morning jam every weekday and small noise."""
    rng = np.random.default_rng(seed)
    rows = days * 86_400 // STEP_S
    tod_h = (np.arange(rows) * STEP_S % 86_400) / 3600.0
    jam = 25.0 * np.exp(-(((tod_h - 8.0) / 1.0) ** 2))
    values = 60.0 - jam[:, None] * np.linspace(0.6, 1.0, n)[None, :] + rng.normal(0.0, 1.0, (rows, n))
    adjacency = np.eye(n)
    for i in range(n - 1):
        adjacency[i, i + 1] = adjacency[i + 1, i] = 0.7
    return values, adjacency


@pytest.fixture(scope="module")
def road():
    values, adjacency = synthetic_road()
    fit_rows = 6 * 288
    params = TrafficForecastParams(utc_offset_s=0)
    model = TrafficForecaster(params).fit(values[:fit_rows], adjacency, 0, STEP_S)
    return model, values, adjacency, fit_rows


def test_synthetic_fit_beats_persistence_inside_the_jam(road):
    model, values, _, fit_rows = road
    test = values[fit_rows:]
    ends = np.arange(11, test.shape[0] - 6)
    pred = model.forecast_series(test, fit_rows * STEP_S * NS, ends)
    y = test[ends + 6]  # 30 min ahead
    err_model = np.sqrt(np.mean((y - pred[:, 5]) ** 2))
    err_persist = np.sqrt(np.mean((y - test[ends]) ** 2))
    assert err_model < 0.7 * err_persist


def test_forecast_matches_forecast_series(road):
    model, values, _, fit_rows = road
    t_end = fit_rows + 100
    one = model.forecast(values[t_end - 11:t_end + 1], t_end * STEP_S * NS)
    series = model.forecast_series(values, 0, np.array([t_end]))[0]
    np.testing.assert_allclose(one, series)
    assert one.shape == (12, values.shape[1])


def test_save_load_round_trip(road):
    model, values, _, fit_rows = road
    recent, t_last = values[fit_rows:fit_rows + 12], (fit_rows + 11) * STEP_S * NS
    expected = model.forecast(recent, t_last)
    for clone in (TrafficForecaster.from_bytes(model.to_bytes()),
                  TrafficForecaster.from_arrays(model.to_arrays())):
        assert clone.params == model.params
        np.testing.assert_array_equal(clone.forecast(recent, t_last), expected)
        np.testing.assert_array_equal(clone.resid_sigma, model.resid_sigma)


def test_missing_live_values(road):
    model, values, _, fit_rows = road
    t_last = (fit_rows + 11) * STEP_S * NS
    recent = values[fit_rows:fit_rows + 12].copy()
    gap = recent.copy()
    gap[-1, 2] = np.nan  # the latest report of segment 2 is missing: its previous value stands in
    filled = recent.copy()
    filled[-1, 2] = recent[-2, 2]
    np.testing.assert_allclose(model.forecast(gap, t_last), model.forecast(filled, t_last))
    silent = recent.copy()
    silent[:, 4] = np.nan  # segment 4 reported nothing for an hour: starts from its profile
    out = model.forecast(silent, t_last)
    assert np.all(np.isfinite(out))
    profile_now = model.profile_at(np.array([t_last]))[0, 4]
    assert abs(out[0, 4] - profile_now) < 10.0


def test_fit_tolerates_missing_training_values():
    values, adjacency = synthetic_road(days=5)
    rng = np.random.default_rng(3)
    holed = values.copy()
    holed[rng.random(values.shape) < 0.05] = np.nan
    holed[100:160, 1] = np.nan  # an outage of five hours
    model = TrafficForecaster(TrafficForecastParams(utc_offset_s=0)).fit(holed, adjacency, 0, STEP_S)
    assert np.all(np.isfinite(model.coef)) and np.all(np.isfinite(model.profile))
    assert np.all(np.isfinite(model.forecast(holed[100:112], 111 * STEP_S * NS)))


def test_a_segment_that_never_reported():
    values, adjacency = synthetic_road(days=4)
    values[:, 2] = np.nan  # segment 2 is in the graph but has no data at all
    model = TrafficForecaster(TrafficForecastParams(utc_offset_s=0)).fit(values, adjacency, 0, STEP_S)
    assert np.all(np.isfinite(model.coef))
    t_last = (values.shape[0] - 1) * STEP_S * NS
    out = model.forecast(values[-12:], t_last)
    others = [0, 1, 3, 4, 5]
    assert np.all(np.isnan(out[:, 2])) and np.all(np.isfinite(out[:, others]))
    live = values[-12:].copy()
    live[:, 2] = 40.0  # once it reports, it is forecast from its own values and its neighbours
    out = model.forecast(live, t_last)
    assert np.all(np.isfinite(out)) and np.all(np.abs(out[:3, 2] - 40.0) < 15.0)


def test_graph_normalises_and_ranks_neighbours():
    adjacency = np.array([[1.0, 0.2, 0.6], [0.2, 1.0, 0.0], [0.6, 0.0, 1.0]])
    g = build_graph(adjacency, top_k=2)
    assert g.ptr.tolist() == [0, 2, 3, 4]
    assert g.top_k[0].tolist() == [2, 1] and g.top_k[1].tolist() == [0, 1]  # padded with itself
    np.testing.assert_allclose(np.add.reduceat(g.w, g.ptr[:-1]), 1.0)


# -- incidents ---------------------------------------------------------------------------------

def test_detector_raises_after_two_low_intervals_and_clears():
    det = IncidentDetector(np.array([1.0, 1.0]), IncidentParams(band_k=3.0, min_drop=5.0, step_s=STEP_S))
    ts = np.arange(8, dtype=np.int64) * STEP_S * NS
    fc = np.full(8, 60.0)
    obs = np.array([60.0, 50.0, 60.0, 40.0, 42.0, 41.0, 59.0, 58.0])  # one dip, then a jam, then recovery
    ev = det.update_many(np.zeros(8, np.int32), ts, obs, fc)
    assert ev.kind.tolist() == [RAISE, CLEAR]
    assert ev.ts_ns.tolist() == [ts[4], ts[7]]
    assert ev.residual[0] == pytest.approx(-18.0)
    assert not det.active.any()


def test_detector_state_round_trip_keeps_an_open_run():
    params = IncidentParams(band_k=1.0, min_drop=5.0, step_s=STEP_S, raise_after=3)
    det = IncidentDetector(np.array([2.0, 7.0]), params)
    det.update_many(np.array([1, 1]), np.array([0, STEP_S * NS]), np.array([40.0, 40.0]), np.array([60.0, 60.0]))
    clone = IncidentDetector.from_arrays(det.to_arrays())
    assert clone.params == params
    np.testing.assert_array_equal(clone.threshold, [5.0, 7.0])
    ev = clone.update_many(np.array([1]), np.array([2 * STEP_S * NS]), np.array([40.0]), np.array([60.0]))
    assert ev.kind.tolist() == [RAISE]  # the third low interval, two of them seen before the restart


def test_detector_run_is_broken_by_a_missing_interval_and_grows():
    det = IncidentDetector(np.array([1.0]), IncidentParams(band_k=1.0, min_drop=5.0, step_s=STEP_S))
    ts = np.array([0, 2 * STEP_S], dtype=np.int64) * NS  # the interval between was not reported
    ev = det.update_many(np.array([3, 3]), ts, np.array([40.0, 40.0]), np.array([60.0, 60.0]))
    assert len(ev) == 0 and det.active.shape == (4,)
    ev = det.update_many(np.array([3]), np.array([3 * STEP_S * NS]), np.array([40.0]), np.array([60.0]))
    assert ev.kind.tolist() == [RAISE] and ev.segment.tolist() == [3]


def test_inject_incident_collapses_and_spreads():
    values, adjacency = synthetic_road(days=1)
    out, affected = inject_incident(values, adjacency, segment=2, start=100, duration=10, severity=0.3,
                                    hops=1, fanout=2, spread_steps=2, recovery=3)
    np.testing.assert_allclose(out[100:110, 2], 0.3 * values[100:110, 2])
    assert np.all(out[102:110, [1, 3]] < values[102:110, [1, 3]])  # neighbours two steps later, milder
    np.testing.assert_array_equal(out[100:102, [1, 3]], values[100:102, [1, 3]])
    assert np.all(out[102:110, 1] > 0.3 * values[102:110, 1])
    untouched = ~affected
    np.testing.assert_array_equal(out[untouched], values[untouched])
    assert affected[:, [0, 4, 5]].sum() == 0 and affected[110:113, 2].all() and not affected[113:, 2].any()


def test_incident_found_and_quiet_on_clean_data(road):
    model, values, adjacency, fit_rows = road
    test = values[fit_rows:]
    t0 = fit_rows * STEP_S * NS
    params = IncidentParams(step_s=STEP_S)
    band = learn_bands(model, values[:fit_rows], 0, params)
    assert band.shape == (values.shape[1],) and np.all((band > 0) & (band < 10.0))  # noise sigma is 1
    clean, rows = replay(model, band, test, t0, params)
    assert len(clean) == 0 and rows[0] == 11 + params.horizon
    start = 150
    injected, _ = inject_incident(test, adjacency, segment=3, start=start, duration=12)
    ev, _ = replay(model, band, injected, t0, params)
    raised = ev.kind == RAISE
    assert 3 in ev.segment[raised].tolist()
    first = (ev.ts_ns[raised & (ev.segment == 3)].min() - t0) // (STEP_S * NS)
    assert first == start + 1  # the second low interval
    sigma_based = IncidentDetector.from_forecaster(model, params)
    assert np.all(sigma_based.threshold >= params.min_drop)


def test_incident_evaluation_on_the_synthetic_road(road):
    model, values, adjacency, fit_rows = road
    params = IncidentParams(step_s=STEP_S)
    band = learn_bands(model, values[:fit_rows], 0, params)
    report = evaluate_incidents(model, band, values[fit_rows:], adjacency, fit_rows * STEP_S * NS, params,
                                n_incidents=6, seed=2)
    assert report.injected == 6 and report.detected == 6 and report.detection_rate == 1.0
    assert report.false_alarms == 0 and report.false_alarms_per_day == 0.0
    assert report.mean_time_to_detect_min == pytest.approx(5.0)
    assert 0 < report.injected_free_flow == report.detected_free_flow <= 6


# -- the real check: the published protocol on Los-loop ----------------------------------------

def test_los_loop_15_min_beats_persistence_and_tgcn():
    data = load_los_loop()  # the packaged week: missing data fails here, never skips
    assert data.speeds.shape == (2016, 207) and len(data.sensor_ids) == 207
    n_train = split_rows(2016)
    t0 = los_start_ns()
    model = TrafficForecaster(TrafficForecastParams(utc_offset_s=-8 * 3600)).fit(
        data.speeds[:n_train], data.adjacency, t0, STEP_S)
    test = data.speeds[n_train:]
    x, y = protocol_windows(test, 3)
    pred = model.forecast_series(test, t0 + n_train * STEP_S * NS, np.arange(x.shape[0]) + 11)[:, :3]
    ours, persist = pooled_metrics(y, pred), pooled_metrics(y, persistence_forecast(x, 3))
    assert persist.rmse == pytest.approx(5.54, abs=0.01)  # README's persistence figure: protocol check
    assert ours.rmse < persist.rmse and ours.mae < persist.mae
    assert ours.rmse <= 4.90 and ours.mae <= 2.95  # the targets (T-GCN: 5.1264 / 3.1802)


def test_cli_evaluates_any_directory_with_the_two_files(tmp_path, capsys):
    import json

    from wulian.cli import main

    values, adjacency = synthetic_road(days=4)
    ids = ",".join(f"s{i}" for i in range(values.shape[1]))
    np.savetxt(tmp_path / "los_speed.csv", values, delimiter=",", header=ids, comments="", fmt="%.4f")
    np.savetxt(tmp_path / "los_adj.csv", adjacency, delimiter=",", fmt="%.6f")
    rc = main(["traffic", "evaluate", "--data", str(tmp_path), "--json", "--train-fraction", "0.75",
               "--utc-offset-h", "0", "--start", "1970-01-01T00:00", "--incidents", "3", "--per-step"])
    assert rc == 0
    report = json.loads(capsys.readouterr().out)
    assert report["train_rows"] == int(0.75 * values.shape[0]) and report["sensors"] == values.shape[1]
    assert set(report["horizons"]) == {"15", "30", "45", "60"}
    assert report["horizons"]["15"]["windows"] == report["test_rows"] - 12 - 3
    assert report["horizons"]["60"]["model"]["rmse"] < report["horizons"]["60"]["persistence"]["rmse"]
    assert len(report["per_step"]) == 12 and report["incidents"]["injected"] == 3
    assert main(["traffic", "evaluate", "--data", str(tmp_path / "missing")]) == 2


def test_dataset_reads_xz_files_and_says_what_is_missing(tmp_path):
    """A directory may hold the two files plain or xz-compressed (as the packaged week is); a missing or
    corrupt file is a clear error, not a silent fallback."""
    import lzma

    values, adjacency = synthetic_road(days=1, n=3)
    plain, packed = tmp_path / "plain", tmp_path / "packed"
    plain.mkdir(), packed.mkdir()
    np.savetxt(plain / "los_speed.csv", values, delimiter=",", header="a,b,c", comments="", fmt="%.4f")
    np.savetxt(plain / "los_adj.csv", adjacency, delimiter=",", fmt="%.6f")
    for name in ("los_speed.csv", "los_adj.csv"):
        (packed / (name + ".xz")).write_bytes(lzma.compress((plain / name).read_bytes()))
    a, b = load_dataset(plain), load_dataset(packed)
    assert a.sensor_ids == b.sensor_ids == ("a", "b", "c")
    assert np.array_equal(a.speeds, b.speeds) and np.array_equal(a.adjacency, b.adjacency)
    assert a.speeds.shape == (288, 3)
    (packed / "los_adj.csv.xz").unlink()
    with pytest.raises(FileNotFoundError, match=r"neither los_adj\.csv nor los_adj\.csv\.xz"):
        load_dataset(packed)
    (packed / "los_adj.csv.xz").write_bytes(b"not xz at all")
    with pytest.raises(ValueError, match="los_adj.csv.xz"):
        load_dataset(packed)


def test_los_loop_week_ships_as_package_data():
    """The week is installed with the wheel: every file beside the loader matches pyproject's package-data
    globs for ``simulators``, and the loader finds it through importlib.resources."""
    import fnmatch
    import tomllib

    from wulian.simulators.los_loop import PACKAGED

    root = Path(__file__).resolve().parents[1]
    globs = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"][
        "package-data"]["wulian.simulators"]
    names = {f.name for f in PACKAGED.iterdir()}
    assert {"los_speed.csv.xz", "los_adj.csv.xz", "README.md"} <= names
    for name in names:
        assert any(fnmatch.fnmatch(f"data/los_loop/{name}", g) for g in globs), name
