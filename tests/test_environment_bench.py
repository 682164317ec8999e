"""``wulian bench environment`` runs at a tiny size, prints one JSON object, and its numba and numpy
paths agree (the ratio it reports compares equal work)."""
from __future__ import annotations

import json

from wulian.cli.benches import environment as env_bench
from tests.cli import run_command as _cli




def test_bench_environment_tiny(capsys):
    rc = _cli(env_bench, ["environment", "--json", "--stations", "4", "--days", "2", "--chunk", "3",
                          "--river-stations", "2", "--river-days", "3"])
    out = json.loads(capsys.readouterr().out)
    air, water = out["air_hourly_validity_aqi"], out["water_class"]
    assert rc == 0
    assert air["results_agree"] and water["results_agree"]
    assert air["stations"] == 4 and air["days"] == 2 and air["station_days_per_s"] > 0
    assert 0.5 < air["valid_hour_share"] <= 1.0
    assert water["station_hours"] == 2 * 3 * 24 and "speedup_vs_numpy" in water and "numpy_s" in air
