"""``wulian traffic evaluate``: score the traffic forecaster on the published Los-loop protocol.

Prints pooled RMSE / MAE / Accuracy / R2 at 15/30/45/60 minutes for the model, persistence and the
historical time-of-day average, fit and forecast timings (and the CPU they ran on), and the incident
detector on injected incidents of several shapes and detector faults, with its threshold curve.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path

METHODS = ("model", "persistence", "historical_average")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("traffic", help="traffic forecasting tools")
    tsub = p.add_subparsers(dest="traffic_command", required=True, metavar="ACTION")
    ev = tsub.add_parser("evaluate", help="fit and score the forecaster on the published protocol")
    ev.add_argument("--data", type=Path, default=None,
                    help="directory with los_speed.csv and los_adj.csv, plain or .xz "
                         "(default: the Los-loop week shipped with wulian)")
    ev.add_argument("--train-fraction", type=float, default=0.8,
                    help="chronological split (default 0.8, the published one; 0.7 is also reported in the README)")
    ev.add_argument("--start", default="2012-03-01T00:00",
                    help="local time of the first row (default the Los-loop week)")
    ev.add_argument("--utc-offset-h", type=float, default=-8.0, help="UTC offset of the roads (default -8)")
    ev.add_argument("--step-s", type=int, default=300, help="seconds between rows (default 300)")
    ev.add_argument("--incidents", type=int, default=30,
                    help="incidents injected per shape (collapse, partial, congestion); half as many detector "
                         "faults per fault shape (0 skips)")
    ev.add_argument("--net-hidden", type=int, default=None, metavar="N",
                    help="hidden units of the forecaster's residual net (default: the forecaster's, 64; 0 = off)")
    ev.add_argument("--per-step", action="store_true", help="also print RMSE/MAE per 5-minute step")
    ev.add_argument("--json", action="store_true", help="print one JSON object")
    ev.add_argument("--check", action="store_true", help="exit 1 unless the issue's targets are all met")
    ev.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from wulian.core.traffic.forecaster import TrafficForecastParams
    from wulian.core.traffic.protocol import los_start_ns
    from wulian.evaluation.traffic import evaluate
    from wulian.simulators.los_loop import PACKAGED_LABEL, load_los_loop

    if args.net_hidden is not None and args.net_hidden < 0:
        print(f"--net-hidden must be >= 0, got {args.net_hidden}", file=sys.stderr)
        return 2
    source = str(args.data) if args.data is not None else PACKAGED_LABEL
    try:
        data = load_los_loop(args.data)
    except (OSError, ValueError) as exc:
        print(f"cannot load {source}: {exc}", file=sys.stderr)
        return 2
    offset_s = int(round(args.utc_offset_h * 3600))
    t0_ns = los_start_ns(dt.datetime.fromisoformat(args.start), offset_s)
    print(f"fitting {data.speeds.shape[1]} sensors on {args.train_fraction:.0%} of {data.speeds.shape[0]} rows",
          file=sys.stderr)
    net = {} if args.net_hidden is None else {"net_hidden": args.net_hidden}
    params = TrafficForecastParams(utc_offset_s=offset_s, **net)
    report = evaluate(data, train_fraction=args.train_fraction, t0_ns=t0_ns, step_s=args.step_s,
                      utc_offset_s=offset_s, params=params, n_incidents=args.incidents)
    report["data"] = source
    if not args.per_step:
        report.pop("per_step", None)
    rc = 1 if args.check and not all(report["checks"].values()) else 0
    if args.json:
        print(json.dumps(report, indent=2))
        return rc
    print(f"train {report['train_rows']} rows, test {report['test_rows']} rows, {report['sensors']} sensors")
    print(f"{'horizon':>8} {'method':<20} {'RMSE':>8} {'MAE':>8} {'Accuracy':>9} {'R2':>8}")
    for minutes, res in report["horizons"].items():
        for method in METHODS:
            m = res[method]
            print(f"{minutes + ' min':>8} {method:<20} {m['rmse']:8.4f} {m['mae']:8.4f} {m['accuracy']:9.4f} "
                  f"{m['r2']:8.4f}")
    for step, res in report.get("per_step", {}).items():
        print(f"step {step:>3} min: model RMSE {res['model']['rmse']:.3f} MAE {res['model']['mae']:.3f}; "
              f"persistence RMSE {res['persistence']['rmse']:.3f} MAE {res['persistence']['mae']:.3f}")
    print(f"fit {report['fit_s']:.2f} s (cpu {report['fit_cpu_s']:.2f} s); "
          f"forecast all sensors x 12 steps {report['forecast_ms']:.3f} ms (p99 {report['forecast_ms_p99']:.3f})")
    failed = [k for k, ok in report["checks"].items() if not ok]
    print("targets: " + ("all met" if not failed else "NOT met: " + ", ".join(failed)))
    if "incidents" in report:
        inc = report["incidents"]
        mttd = inc["mean_time_to_detect_min"]
        unit = "on the learned score" if report.get("detector") == "learned score" else "robust sigmas"
        print(f"incidents (k = {inc['threshold_k']:g} {unit}, chosen on the training rows): detected "
              f"{inc['detected']}/{inc['injected']} ({inc['detection_rate']:.0%}), false alarms "
              f"{inc['false_alarms_per_day']:.2f}/day, mean time to detect {'-' if mttd is None else f'{mttd:.1f}'} min")
        for name, sh in inc["shapes"].items():
            print(f"  {name:<11} {sh['detected']}/{sh['injected']} detected")
        print(f"  detector faults: {inc['faults_classified']}/{inc['faults_injected']} classified as faults, "
              f"{inc['faults_as_incidents']} became incidents")
        print("  curve (k: detection, false alarms/day): " + ", ".join(
            f"{c['k']:g}: {c['detection_rate']:.0%} {c['false_alarms_per_day']:.1f}" for c in inc["curve"]))
        alt = inc.get("alternative")
        if alt:
            amttd = alt["mean_time_to_detect_min"]
            family = "the rules" if alt.get("family") == "rules" else f"relative test {'on' if alt['rel_low'] else 'off'}"
            print(f"  {family} instead (same injections, k = "
                  f"{alt['threshold_k']:g}): detected {alt['detection_rate']:.0%}, false alarms "
                  f"{alt['false_alarms_per_day']:.2f}/day, mean time to detect "
                  f"{'-' if amttd is None else f'{amttd:.1f}'} min")
    print(f"cpu: {report['cpu']}")
    return rc
