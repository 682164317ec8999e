"""The published Los-loop / T-GCN evaluation protocol, for our forecaster and two baselines.

Protocol (T-GCN, Zhao et al. 2019, as stated in the data set's README): chronological split at
int(fraction x T); stride-1 windows built separately inside train and inside test; input 12 steps;
"15/30/45/60 min" = the next 3/6/9/12 steps; a test set of length S gives S - 12 - pre_len windows (the
last possible window is dropped); metrics pooled over every predicted step up to the horizon, every
window and every sensor: RMSE, MAE, Accuracy = 1 - ||Y - Yhat||_F / ||Y||_F and R2 with one global mean.
Our model chooses its hyper-parameters on the tail of the training rows only.
"""
from __future__ import annotations

import datetime as dt
import lzma
import os
import time
from dataclasses import dataclass
from importlib.resources.abc import Traversable
from pathlib import Path

import numpy as np

from wulian.core.timebase import NS_PER_S
from wulian.core.traffic.forecaster import TrafficForecaster, TrafficForecastParams, time_slots, warm_up
from wulian.core.traffic.incidents import IncidentParams, evaluate_incidents, learn_bands

N_IN = 12
HORIZON_STEPS = {15: 3, 30: 6, 45: 9, 60: 12}
LOS_STEP_S = 300
LOS_UTC_OFFSET_S = -8 * 3600  # Los Angeles, PST (the week precedes the 2012 DST switch)
LOS_START_LOCAL = dt.datetime(2012, 3, 1)  # row 0 = 2012-03-01 00:00 local time
SPEED_FILE = "los_speed.csv"
ADJACENCY_FILE = "los_adj.csv"
PACKED_SUFFIX = ".xz"  # either file may also be stored xz-compressed (the packaged week is)


@dataclass(frozen=True, slots=True)
class TrafficDataset:
    speeds: np.ndarray  # float64 [T, N]
    adjacency: np.ndarray  # float64 [N, N]
    sensor_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Metrics:
    rmse: float
    mae: float
    accuracy: float
    r2: float

    def as_dict(self) -> dict:
        return {"rmse": self.rmse, "mae": self.mae, "accuracy": self.accuracy, "r2": self.r2}


def _read_text(directory: Path | Traversable, name: str) -> str:
    """``name`` or ``name.xz`` from ``directory`` (a path or package resources), decoded as UTF-8."""
    plain, packed = directory / name, directory / (name + PACKED_SUFFIX)
    if plain.is_file():
        return plain.read_bytes().decode("utf-8")
    if packed.is_file():
        try:
            return lzma.decompress(packed.read_bytes()).decode("utf-8")
        except lzma.LZMAError as exc:
            raise ValueError(f"{packed}: {exc}") from exc
    raise FileNotFoundError(f"neither {name} nor {name}{PACKED_SUFFIX} in {directory}")


def load_dataset(directory: str | os.PathLike | Traversable) -> TrafficDataset:
    """Read ``los_speed.csv`` (header of sensor ids, then one row per step) and ``los_adj.csv`` (N x N),
    each plain or xz-compressed, from a directory or a package's resources."""
    d = Path(directory) if isinstance(directory, (str, os.PathLike)) else directory
    lines = _read_text(d, SPEED_FILE).splitlines()
    if len(lines) < 2:
        raise ValueError(f"{SPEED_FILE} needs a header of sensor ids and at least one row")
    ids = tuple(s.strip() for s in lines[0].strip().split(","))
    speeds = np.loadtxt(lines[1:], delimiter=",", dtype=np.float64, ndmin=2)
    adjacency = np.loadtxt(_read_text(d, ADJACENCY_FILE).splitlines(), delimiter=",", dtype=np.float64, ndmin=2)
    if speeds.shape[1] != len(ids) or adjacency.shape != (len(ids), len(ids)):
        raise ValueError(f"{len(ids)} sensor ids, speeds {speeds.shape}, adjacency {adjacency.shape}")
    return TrafficDataset(speeds=speeds, adjacency=adjacency, sensor_ids=ids)


def split_rows(n_rows: int, train_fraction: float = 0.8) -> int:
    """Number of training rows: int(fraction x T), the rest is test."""
    if not 0.0 < train_fraction < 1.0:
        raise ValueError("train fraction must be in (0, 1)")
    return int(train_fraction * n_rows)


def protocol_windows(series: np.ndarray, pre_len: int, n_in: int = N_IN) -> tuple[np.ndarray, np.ndarray]:
    """Stride-1 windows of one split: inputs [W, n_in, N] and targets [W, pre_len, N], W = S - n_in - pre_len."""
    n_win = series.shape[0] - n_in - pre_len
    if n_win <= 0:
        raise ValueError(f"{series.shape[0]} rows give no window of {n_in} + {pre_len}")
    start = np.arange(n_win)[:, None]
    return series[start + np.arange(n_in)], series[start + n_in + np.arange(pre_len)]


def pooled_metrics(y: np.ndarray, y_hat: np.ndarray) -> Metrics:
    """RMSE, MAE, Accuracy and R2 pooled over every element (one global mean for R2)."""
    y = np.asarray(y, dtype=np.float64)
    err = y - np.asarray(y_hat, dtype=np.float64)
    sse = float(np.sum(err * err))
    return Metrics(
        rmse=float(np.sqrt(sse / err.size)),
        mae=float(np.mean(np.abs(err))),
        accuracy=float(1.0 - np.sqrt(sse) / np.linalg.norm(y)),
        r2=float(1.0 - sse / np.sum((y - y.mean()) ** 2)),
    )


def persistence_forecast(inputs: np.ndarray, pre_len: int) -> np.ndarray:
    """Last observed value repeated over the horizon: [W, pre_len, N]."""
    return np.repeat(inputs[:, -1:, :], pre_len, axis=1)


def historical_average(train: np.ndarray, train_slot: np.ndarray, n_slots: int) -> np.ndarray:
    """Mean of the training rows per time-of-day slot [n_slots, N] (a slot never seen: the overall mean)."""
    sums = np.zeros((n_slots, train.shape[1]))
    counts = np.zeros((n_slots, 1))
    np.add.at(sums, train_slot, train)
    np.add.at(counts, train_slot, 1.0)
    return np.where(counts > 0, sums / np.maximum(counts, 1.0), train.mean(axis=0))


def los_start_ns(local_start: dt.datetime = LOS_START_LOCAL, utc_offset_s: int = LOS_UTC_OFFSET_S) -> int:
    """Row 0's instant in ns UTC for a naive local start time and a fixed UTC offset."""
    utc = local_start.replace(tzinfo=dt.timezone.utc) - dt.timedelta(seconds=utc_offset_s)
    return int(utc.timestamp()) * NS_PER_S


def evaluate(data: TrafficDataset, train_fraction: float = 0.8, t0_ns: int | None = None,
             step_s: int = LOS_STEP_S, utc_offset_s: int = LOS_UTC_OFFSET_S,
             params: TrafficForecastParams | None = None, incidents: IncidentParams | None = None,
             n_incidents: int = 20, forecast_repeats: int = 200) -> dict:
    """Fit on the training split and score model, persistence and historical average on the test split.

    Returns a JSON-ready dict: per horizon (minutes) the pooled metrics of each method, per-step model
    and persistence RMSE/MAE, fit seconds (wall and CPU), the median forecast latency for all sensors x
    all steps, the chosen shrinkage, and incident detection on injected incidents.
    """
    t0_ns = los_start_ns() if t0_ns is None else int(t0_ns)
    params = params or TrafficForecastParams(utc_offset_s=utc_offset_s)
    values = data.speeds
    n_train = split_rows(values.shape[0], train_fraction)
    train, test = values[:n_train], values[n_train:]
    test_t0 = t0_ns + n_train * step_s * NS_PER_S

    warm_up(params, step_s)
    wall, cpu = time.perf_counter(), time.process_time()
    model = TrafficForecaster(params).fit(train, data.adjacency, t0_ns, step_s)
    fit_s, fit_cpu_s = time.perf_counter() - wall, time.process_time() - cpu

    row_ns = step_s * NS_PER_S
    train_slot = time_slots(t0_ns + np.arange(n_train) * row_ns, step_s, utc_offset_s)[0]
    test_slot = time_slots(test_t0 + np.arange(test.shape[0]) * row_ns, step_s, utc_offset_s)[0]
    ha_table = historical_average(train, train_slot, 86_400 // step_s)

    max_pre = max(HORIZON_STEPS.values())
    report: dict = {"train_rows": n_train, "test_rows": int(test.shape[0]), "sensors": int(values.shape[1]),
                    "horizons": {}, "per_step": {}}
    for minutes, pre in HORIZON_STEPS.items():
        if pre > params.horizons:
            continue
        inputs, y = protocol_windows(test, pre)
        ends = np.arange(inputs.shape[0]) + N_IN - 1
        model_pred = model.forecast_series(test, test_t0, ends)[:, :pre]
        target_slot = test_slot[ends[:, None] + 1 + np.arange(pre)]
        report["horizons"][str(minutes)] = {
            "windows": int(inputs.shape[0]),
            "model": pooled_metrics(y, model_pred).as_dict(),
            "persistence": pooled_metrics(y, persistence_forecast(inputs, pre)).as_dict(),
            "historical_average": pooled_metrics(y, ha_table[target_slot]).as_dict(),
        }
        if pre == max_pre:
            for k in range(pre):
                report["per_step"][str((k + 1) * step_s // 60)] = {
                    "model": pooled_metrics(y[:, k], model_pred[:, k]).as_dict(),
                    "persistence": pooled_metrics(y[:, k], inputs[:, -1]).as_dict(),
                }

    recent = test[:N_IN]
    t_last = test_t0 + (N_IN - 1) * step_s * NS_PER_S
    model.forecast(recent, t_last)
    lat = np.empty(forecast_repeats)
    for k in range(forecast_repeats):
        t = time.perf_counter()
        model.forecast(recent, t_last)
        lat[k] = time.perf_counter() - t
    report["fit_s"] = fit_s
    report["fit_cpu_s"] = fit_cpu_s
    report["forecast_ms"] = float(np.median(lat) * 1e3)
    report["forecast_ms_p99"] = float(np.quantile(lat, 0.99) * 1e3)
    report["shrinkage_by_step"] = [float(v) for v in model.lam]
    report["checks"] = target_checks(report)
    if n_incidents:
        inc_params = incidents or IncidentParams(step_s=step_s)
        band = learn_bands(model, train, t0_ns, inc_params)
        inc = evaluate_incidents(model, band, test, data.adjacency, test_t0, inc_params, n_incidents=n_incidents)
        report["incidents"] = inc.as_dict() | {
            "band_median": float(np.median(band)),
            "params": {k: getattr(inc_params, k) for k in inc_params.__slots__},
        }
    return report


# Issue 5 targets. T-GCN on this protocol (authors' predictions): RMSE 5.1264, MAE 3.1802 at 15 min.
TARGET_RMSE_15 = 4.90
TARGET_MAE_15 = 2.95
TARGET_FIT_S = 10.0
TARGET_FORECAST_MS = 5.0


def target_checks(report: dict) -> dict:
    """Which of the issue's targets a report meets (fit judged on CPU seconds: the machine is shared)."""
    horizons = report["horizons"]
    beats = all(
        res["model"][k] < res[base][k]
        for res in horizons.values() for base in ("persistence", "historical_average") for k in ("rmse", "mae")
    )
    m15 = horizons.get("15", {}).get("model", {})
    return {
        "rmse_15": m15.get("rmse", np.inf) <= TARGET_RMSE_15,
        "mae_15": m15.get("mae", np.inf) <= TARGET_MAE_15,
        "beats_baselines_every_horizon": beats,
        "fit": report["fit_cpu_s"] <= TARGET_FIT_S,
        "forecast": report["forecast_ms"] <= TARGET_FORECAST_MS,
    }
