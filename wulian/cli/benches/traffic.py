"""``wulian bench traffic``: the traffic service's figures on the real Los-loop week, as it runs online.

The data are converted to km/h and everything runs with the service's own parameters
(``core.traffic.online.OnlineParams``: regime drop 8 km/h, incident band floor 24 km/h), then the
errors are converted back to mph for comparison with the published T-GCN numbers. Measured in the same
run: fit seconds for all 207 sensors (wall and CPU; the kernels are single-threaded), the forecast of all
sensors x 12 steps, one service tick (forecast + incident detector update), pooled RMSE / MAE at
15/30/45/60 min on the published protocol (``wulian.evaluation.traffic``) against persistence, the
historical time-of-day average and a per-sensor least-squares regression on the last 12 values (fitted
here, timed as the fit baseline), and incident detection on injected incidents (rate, false alarms per
day, mean time to detect).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from wulian.cli.benches import with_machine

TGCN_15 = {"rmse": 5.1264, "mae": 3.1802}  # the authors' own 15-minute predictions (simulators/data/los_loop/README.md)


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def linreg_baseline(values: np.ndarray, n_train: int, pre: int = 3, n_in: int = 12) -> tuple[float, float, float]:
    """Per-sensor least squares of the next ``pre`` steps on the last ``n_in`` values plus an intercept,
    fitted on the training windows, scored pooled on the test windows. Returns (fit s, RMSE, MAE)."""
    from wulian.core.traffic.protocol import protocol_windows

    train, test = values[:n_train], values[n_train:]
    x_tr, y_tr = protocol_windows(train, pre, n_in)
    x_te, y_te = protocol_windows(test, pre, n_in)
    n = values.shape[1]
    t = time.perf_counter()
    coefs = []
    for s in range(n):
        a = np.hstack([x_tr[:, :, s], np.ones((x_tr.shape[0], 1))])
        coefs.append(np.linalg.lstsq(a, y_tr[:, :, s], rcond=None)[0])
    fit_s = time.perf_counter() - t
    pred = np.empty_like(y_te)
    for s in range(n):
        pred[:, :, s] = np.hstack([x_te[:, :, s], np.ones((x_te.shape[0], 1))]) @ coefs[s]
    err = y_te - pred
    return fit_s, float(np.sqrt(np.mean(err**2))), float(np.mean(np.abs(err)))


def tick_ms(model, det, values: np.ndarray, t0_ns: int, params, repeats: int) -> float:
    """Median compute of one service tick for every sensor: forecast 1..12 steps from the last 12 bins
    and feed the detector the bin's speeds against the forecast issued ``incident_horizon`` bins earlier."""
    step_ns = model.step_s * 1_000_000_000
    fc_prev = model.forecast(values[:12], t0_ns + 11 * step_ns)[params.incident_horizon - 1]
    out = np.empty(repeats)
    for k in range(repeats):
        end = 12 + params.incident_horizon + k % (values.shape[0] - 20)
        t_last = t0_ns + end * step_ns
        start = time.perf_counter()
        model.forecast(values[end - 11:end + 1], t_last)
        det.update_bin(t_last + k * step_ns, values[end], fc_prev)
        out[k] = time.perf_counter() - start
    return float(np.median(out) * 1e3)


def run(args: argparse.Namespace) -> int:
    from wulian.core.traffic.forecaster import TrafficForecaster
    from wulian.core.traffic.incidents import learn_detector
    from wulian.core.traffic.online import MPH_TO_KMH, OnlineParams
    from wulian.core.traffic.protocol import (
        LOS_UTC_OFFSET_S, TARGET_FIT_S, TARGET_FORECAST_MS, TARGET_MAE_15, TARGET_RMSE_15, los_start_ns, split_rows,
    )
    from wulian.simulators.los_loop import TrafficDataset, load_los_loop
    from wulian.evaluation.traffic import evaluate

    data = load_los_loop(args.data)
    kmh = TrafficDataset(speeds=data.speeds * MPH_TO_KMH, adjacency=data.adjacency, sensor_ids=data.sensor_ids)
    params = OnlineParams(utc_offset_s=LOS_UTC_OFFSET_S)
    n_incidents = 10 if args.quick else args.incidents
    repeats = 50 if args.quick else args.repeats
    n_train = split_rows(kmh.speeds.shape[0], 0.8)
    t0 = los_start_ns()

    _log(f"fit + protocol + {n_incidents} injected incidents on {kmh.speeds.shape[1]} sensors "
         "(km/h, the service's parameters)")
    rep = evaluate(kmh, t0_ns=t0, utc_offset_s=LOS_UTC_OFFSET_S, params=params.forecaster_params(),
                   incidents=params.incident_params(), n_incidents=n_incidents, forecast_repeats=repeats)
    _log("baseline: per-sensor least squares on the last 12 values")
    lr_fit_s, lr_rmse, lr_mae = linreg_baseline(data.speeds, n_train)

    _log("service tick: forecast + detector update")
    model = TrafficForecaster(params.forecaster_params()).fit(kmh.speeds[:n_train], kmh.adjacency, t0, params.step_s)
    det = learn_detector(model, kmh.speeds[:n_train], t0, params.incident_params(), adjacency=kmh.adjacency)
    test_t0 = t0 + n_train * params.step_ns
    tick = tick_ms(model, det, kmh.speeds[n_train:], test_t0, params, repeats)

    def mph(m: dict) -> dict:
        return {"rmse": m["rmse"] / MPH_TO_KMH, "mae": m["mae"] / MPH_TO_KMH, "accuracy": m["accuracy"], "r2": m["r2"]}

    horizons = {h: {k: mph(v) for k, v in res.items() if k != "windows"} for h, res in rep["horizons"].items()}
    m15 = horizons["15"]["model"]
    beats = all(res["model"][k] < res[b][k] for res in horizons.values()
                for b in ("persistence", "historical_average") for k in ("rmse", "mae"))
    inc = rep["incidents"]
    out = {
        "sensors": rep["sensors"], "train_rows": rep["train_rows"], "test_rows": rep["test_rows"],
        "fit_s": round(rep["fit_s"], 3), "fit_cpu_s": round(rep["fit_cpu_s"], 3),
        "forecast_ms": round(rep["forecast_ms"], 4), "forecast_ms_p99": round(rep["forecast_ms_p99"], 4),
        "tick_ms": round(tick, 4),
        "rmse_15_mph": round(m15["rmse"], 4), "mae_15_mph": round(m15["mae"], 4),
        "persistence_rmse_15_mph": round(horizons["15"]["persistence"]["rmse"], 4),
        "historical_average_rmse_15_mph": round(horizons["15"]["historical_average"]["rmse"], 4),
        "linreg_rmse_15_mph": round(lr_rmse, 4), "linreg_mae_15_mph": round(lr_mae, 4),
        "linreg_fit_s": round(lr_fit_s, 3),
        "tgcn_rmse_15_mph": TGCN_15["rmse"], "tgcn_mae_15_mph": TGCN_15["mae"],
        "rmse_15_vs_tgcn": round(m15["rmse"] / TGCN_15["rmse"], 4),
        "rmse_15_vs_persistence": round(m15["rmse"] / horizons["15"]["persistence"]["rmse"], 4),
        "rmse_15_vs_linreg": round(m15["rmse"] / lr_rmse, 4),
        "fit_vs_linreg": round(rep["fit_s"] / lr_fit_s, 2) if lr_fit_s > 0 else None,
        "horizons_mph": {h: {k: {q: round(x, 4) for q, x in v.items()} for k, v in res.items()}
                         for h, res in horizons.items()},
        "incidents": {k: (round(v, 4) if isinstance(v, float) else v) for k, v in inc.items()
                      if k not in ("params", "curve", "training_curve")}
        | {"false_alarms_per_sensor_day": round(inc["false_alarms_per_day"] / rep["sensors"], 4)},
        "incident_params_kmh": inc["params"],
        "targets": {
            "rmse_15": m15["rmse"] <= TARGET_RMSE_15, "mae_15": m15["mae"] <= TARGET_MAE_15,
            "beats_baselines_every_horizon": beats, "fit_cpu_s": rep["fit_cpu_s"] <= TARGET_FIT_S,
            "forecast_ms": rep["forecast_ms"] <= TARGET_FORECAST_MS,
        },
    }
    out = with_machine(out)
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    print(f"machine: {out['machine']}")
    print(f"{out['sensors']} sensors: fit {out['fit_s']:.2f} s (cpu {out['fit_cpu_s']:.2f} s, least-squares "
          f"baseline {out['linreg_fit_s']:.2f} s); forecast all x 12 steps {out['forecast_ms']:.3f} ms; "
          f"service tick {out['tick_ms']:.3f} ms")
    print(f"15 min (mph): RMSE {out['rmse_15_mph']:.3f} MAE {out['mae_15_mph']:.3f}; persistence "
          f"{out['persistence_rmse_15_mph']:.3f}, historical average {out['historical_average_rmse_15_mph']:.3f}, "
          f"least squares {out['linreg_rmse_15_mph']:.3f}, T-GCN {TGCN_15['rmse']}")
    i = out["incidents"]
    mttd = i["mean_time_to_detect_min"]
    print(f"incidents: {i['detected']}/{i['injected']} detected ({i['detection_rate']:.0%}), "
          f"{i['false_alarms_per_day']:.2f} false alarms/day, mean time to detect "
          f"{'-' if mttd is None else f'{mttd:.1f}'} min")
    failed = [k for k, ok in out["targets"].items() if not ok]
    print("targets: " + ("all met" if not failed else "NOT met: " + ", ".join(failed)))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("traffic", help="traffic forecaster and incident detection on Los-loop, as run online")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--quick", action="store_true", help="10 incidents and 50 timing repeats")
    p.add_argument("--data", type=Path, default=None,
                   help="directory with los_speed.csv and los_adj.csv (default: the Los-loop week shipped with wulian)")
    p.add_argument("--incidents", type=int, default=40, help="incidents injected one at a time into the test days")
    p.add_argument("--repeats", type=int, default=200, help="timing repeats of forecast and tick")
    p.set_defaults(func=run)
