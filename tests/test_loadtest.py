"""``wulian loadtest``: the mix file (packaged Shantou, refusals of a bad one), the step judgement, and a
tiny mix through the real stack (PostgreSQL+TimescaleDB and the authenticated Mosquitto of the session's
``pg_stack``, ``wulian ingest`` as its own process) with its JSON checked figure by figure."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from wulian.cli.benches.city_load import (IN_FLIGHT_S, factor_plan, judge_step, latency_summary,
                                          rows_per_message)
from wulian.cli.commands import loadtest as loadtest_cmd
from wulian.core.const import Stream
from wulian.ingest.codecs.contract import PayloadLimits
from wulian.ingest.codecs.registry import decode_message
from wulian.simulators.city_mix import PayloadSource, device_ids, load_mix, packaged_mix
from tests.cli import run_command

TINY = """
city = "tinytown"
region = "tinytown"

[[class]]
key = "vehicles"
stream = "vehicle"
codec = "jt808"
devices = 40
period_s = 10

[[class]]
key = "meters"
stream = "meter"
devices = 3000
period_s = 900
simulated_devices = 60
id_prefix = "TTM"

[[class]]
key = "stations"
stream = "pollution"
codec = "hj212"
devices = 12
period_s = 60

[[class]]
key = "roads"
stream = "traffic"
devices = 30
period_s = 60
id_prefix = "TTR"
"""


def test_packaged_shantou_mix_has_the_citys_real_rates():
    mix = packaged_mix("shantou")
    by = {c.key: c for c in mix.classes}
    assert by["vehicles"].msgs_per_s == 500 and by["vehicles"].codec == "jt808"
    assert by["meters"].msgs_per_s == pytest.approx(1_500_000 / 900)
    assert by["meters"].represents == 75 and by["meters"].simulated_period_s == 12
    assert by["pollution"].codec == "hj212" and by["pollution"].msgs_per_s == 5
    assert mix.msgs_per_s == pytest.approx(500 + 1666.667 + 5 + 1 + 20 / 60 + 500 / 300, rel=1e-4)
    ids = device_ids(by["meters"])
    assert len(ids) == len(set(ids)) == 20_000


def test_every_class_sends_what_ingest_decodes_and_each_device_s_times_never_repeat():
    mix = packaged_mix("shantou")
    rows = rows_per_message(mix)
    assert rows["vehicles"] == 1 and rows["meters"] == 4 and rows["pollution"] >= 10 and rows["roads"] == 1
    meters = next(c for c in mix.classes if c.key == "meters")
    src = PayloadSource(meters, [0, 1])
    t = 1_790_000_000 * 10**9
    a = decode_message(Stream.METER, meters.kind, src.payload(0, t), t, PayloadLimits())
    b = decode_message(Stream.METER, meters.kind, src.payload(0, t + 12 * 10**9), t, PayloadLimits())
    assert a.readings[0].ts_ns != b.readings[0].ts_ns
    assert all(y.value >= x.value for x, y in zip(a.readings, b.readings))  # registers never go back


@pytest.mark.parametrize("body, words", [
    ('[[class]]\nkey="x"\nstream="air"\ncodec="modbus"\ndevices=1\nperiod_s=60\n', "codec 'modbus'"),
    ('[[class]]\nkey="x"\nstream="air"\ncodec="jt808"\ndevices=1\nperiod_s=60\n', "vehicle stream only"),
    ('[[class]]\nkey="x"\nstream="meter"\ndevices=1000\nperiod_s=1\nsimulated_devices=500\n', "every 0.5 s"),
    ('[[class]]\nkey="x"\nstream="lava"\ndevices=1\nperiod_s=60\n', "lava"),
    ('[[class]]\nkey="x"\nstream="air"\nperiod_s=60\n', "missing devices"),
    ('city = "empty"\n', "no [[class]]"),
])
def test_a_bad_mix_file_is_refused_naming_what(tmp_path, body, words):
    f = tmp_path / "mix.toml"
    f.write_text(body)
    with pytest.raises(ValueError) as exc:
        load_mix(f)
    assert words in str(exc.value)


def test_an_unknown_city_names_the_packaged_ones():
    with pytest.raises(ValueError) as exc:
        packaged_mix("atlantis")
    assert "shantou" in str(exc.value)


def test_a_step_is_sustained_only_if_stored_keeps_up_and_the_backlog_does_not_grow():
    assert judge_step(10_000, 9_600, 0, 300, 30.0)[0] is True
    assert judge_step(10_000, 9_400, 0, 0, 30.0)[0] is False  # stored < 95 %
    # a backlog rising by more than 5 % of the offered messages (and than IN_FLIGHT_S of them) lags
    assert judge_step(10_000, 9_600, 1_000, 1_000 + 700, 30.0)[0] is False
    # at a tiny rate what is in flight (a few messages) is not a growing backlog
    assert judge_step(100, 99, 0, int(IN_FLIGHT_S * 100 / 5.0), 5.0)[0] is True
    assert judge_step(0, 0, 0, 0, 5.0)[0] is False


def test_factors_climb_by_doubling_and_descend_only_below_one():
    assert factor_plan(16, 0.125) == ([1, 2, 4, 8, 16], [0.5, 0.25, 0.125])
    assert factor_plan(1, 1) == ([1], [])
    assert factor_plan(12, 0.5) == ([1, 2, 4, 8], [0.5])


def test_a_latency_counts_only_on_a_sustained_step():
    ok = latency_summary([10.0, 20.0, 30.0], True)
    assert ok["p99_ms"] is not None and ok["timeouts"] == 0
    lag = latency_summary([10.0, 20.0, 3000.0], False)
    assert lag["p99_ms"] is None and lag["p99_ms_under_unsustained_load"] is not None
    timed_out = latency_summary([10.0, None], True)
    assert timed_out["timeouts"] == 1 and timed_out["p99_ms"] is None  # a lost probe is above any p99 seen


def test_loadtest_tiny_mix_through_the_real_stack(pg_stack, tmp_path, monkeypatch, capsys):
    mix = tmp_path / "tiny.toml"
    mix.write_text(TINY)
    secrets = dict(line.split("=", 1) for line in (pg_stack.stack.dir / "secrets.env").read_text().splitlines()
                   if "=" in line and not line.startswith("#"))
    for key, val in {"WULIAN_STACK__DIR": str(pg_stack.stack.dir), "WULIAN_STACK__PG_PORT": str(pg_stack.stack.pg_port),
                     "WULIAN_STACK__MQTT_PORT": str(pg_stack.stack.mqtt_port), "WULIAN_DB__DSN": pg_stack.db.dsn,
                     "WULIAN_MQTT__PORT": str(pg_stack.stack.mqtt_port),
                     "WULIAN_MQTT__USERNAME": secrets["WULIAN_MQTT__USERNAME"],
                     "WULIAN_MQTT__PASSWORD": secrets["WULIAN_MQTT__PASSWORD"]}.items():
        monkeypatch.setenv(key, val)
    rc = run_command(loadtest_cmd, ["loadtest", "--json", "--mix", str(mix), "--step-s", "5", "--max-factor", "2",
                                    "--warmup-s", "2", "--drain-s", "120"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0
    assert out["machine"]["cpu_model"] and out["city"] == "tinytown"
    meters = next(c for c in out["mix"] if c["key"] == "meters")
    assert meters["represents"] == 50 and meters["simulated_devices"] == 60 and meters["rows_per_msg"] == 4
    base = out["offered_at_factor_1"]["msgs_per_s"]
    assert base == pytest.approx(4 + 3000 / 900 + 0.2 + 0.5, abs=0.1)
    steps = out["steps"]
    assert steps[0]["factor"] == 1
    for st in steps:
        assert st["offered_msgs_per_s"] == pytest.approx(base * st["factor"], rel=0.01)
        assert st["offered_rows_per_s"] > st["offered_msgs_per_s"] > 0
        assert set(st["cpu"]["cpu_s"]) == {"ingest", "postgresql", "broker", "publisher", "publisher2"}
        assert st["alarm_latency"]["probes"] > 0
        if st["sustained"]:
            assert st["stored_vs_offered"] >= 0.95
            assert st["alarm_latency"]["p99_ms"] is None or st["alarm_latency"]["p99_ms"] > 0
    # the headroom is a factor the run sustained, or the output says it is below 1
    sustained = [st["factor"] for st in steps if st["sustained"]]
    if out["headroom_factor"] is not None and out["headroom_factor"] >= 1:
        assert out["headroom_factor"] == max(sustained) and out["headroom_below_1"] is False
    else:
        assert out["headroom_below_1"] is True
    # every published row stored, none twice, nothing refused
    assert out["drained"] is True and out["backlog_at_end"] == 0
    assert out["lost"] == 0 and out["stored_rows"] == out["expected_rows"] > 0
    assert out["dead_letters"] == 0
    assert out["bytes_per_simulated_day"] > 0 and out["bytes_added_per_table"]["readings"] > 0


def test_the_installed_cli_finds_the_packaged_mixes_outside_the_checkout(tmp_path):
    """``--city`` reads package data (``wulian.simulators/data/mixes``), not a path in the checkout."""
    out = subprocess.run([sys.executable, "-m", "wulian", "loadtest", "--city", "atlantis"], cwd=tmp_path,
                         capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"}, timeout=120)
    assert out.returncode == 2
    assert out.stderr.startswith("wulian loadtest: error: no packaged mix for city 'atlantis'")
    assert "shantou" in out.stderr and "Traceback" not in out.stderr
