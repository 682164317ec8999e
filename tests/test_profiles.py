"""The shipped profiles (issue 19, core/streams_profiles.py): each installs with `wulian stream add
--profile`, its simulated fleet (simulators/profiles.py) publishes through the broker into ingest and is
stored, and one of its default rules raises on the fleet's misbehaving device - no code per profile."""
import asyncio
import time
import uuid

import orjson
import pytest

from wulian.cli.commands import stream
from tests.helpers import disable_registry_stream_rules
from wulian.core.streams_profiles import (
    KGCE_PER_KWH_ELECTRICITY, KJ_PER_KGCE, PROFILES, kgce_of_steam, time_to_threshold)
from wulian.ingest.mqtt_client import MqttPublisher
from wulian.ingest.service import mqtt_params, running_ingestor
from wulian.simulators.profiles import build_profile_fleet
from tests.cli import run_command
from tests.conftest import wait_until

# profile -> the default rule its misbehaving device (the fleet's first) must raise within an hour
EXPECTED_RULE = {"coldchain": "冷链温度超限", "charging": "充电桩故障", "energy": "用电需量超限",
                 "equipment": "振动趋势预警"}


@pytest.fixture(autouse=True)
async def _stream_rules_disabled_after(test_dsn):
    yield
    await disable_registry_stream_rules(test_dsn)


def test_every_profile_names_a_rule_its_simulator_raises():
    assert set(EXPECTED_RULE) == set(PROFILES)
    for name, rule in EXPECTED_RULE.items():
        assert rule in {r["name"] for r in PROFILES[name]["default_rules"]}


def test_standard_coal_factors_and_time_to_threshold():
    assert KGCE_PER_KWH_ELECTRICITY == pytest.approx(3600 / KJ_PER_KGCE, abs=1e-4)  # equivalent value
    assert kgce_of_steam(1.0, 2763.0) == pytest.approx(94.28, abs=0.01)  # 1 t at 2763 kJ/kg
    # 1 °C/min towards 95 °C from 80 °C: 15 minutes left; falling or flat: never; past it: now
    assert time_to_threshold([0, 60, 120], [78.0, 79.0, 80.0], 95.0) == pytest.approx(900.0)
    assert time_to_threshold([0, 60, 120], [80.0, 80.0, 80.0], 95.0) is None
    assert time_to_threshold([0, 60], [96.0, 97.0], 95.0) == 0.0


def test_equipment_trend_rule_warns_before_the_vibration_limit():
    """The faulty pump's vibration rises linearly through ISO 10816-3 zone D (7.1 mm/s); the equipment
    profile's trend rule warns well before the crossing. The healthy pump (flat, noisy) is never warned."""
    from wulian.core.alarms import AlarmEngine, Rule, SeriesKey, TransitionKind

    rules = [Rule.from_dict({**r, "id": i + 1, "stream": "equipment"})
             for i, r in enumerate(PROFILES["equipment"]["default_rules"])]
    trend_id = next(r.id for r in rules if r.name == "振动趋势预警")
    fleet = build_profile_fleet("equipment", n=2, seed=3)
    eng = AlarmEngine(rules, [SeriesKey("equipment", d.device_id, "vibration", "pump") for d in fleet])
    t0 = 1_767_225_600  # an hour boundary: the faulty pump ramps from minute 30
    warned, crossed = {}, {}
    for k in range(3 * 60):  # three hours, a reading a minute
        ts = (t0 + 60 * k) * 1_000_000_000
        vib = [d.sample(ts)["values"]["vibration"] for d in fleet]
        for i, v in enumerate(vib):
            if v > 7.1:
                crossed.setdefault(i, k)
        for s, rid, kind, *_ in eng.update_many([0, 1], [ts, ts], vib).rows():
            if rid == trend_id and kind is TransitionKind.RAISE:
                warned.setdefault(s, k)
    assert 1 not in warned and 1 not in crossed
    assert crossed[0] == 49 and warned[0] <= crossed[0] - 10, (warned, crossed)  # >= 10 minutes ahead


@pytest.mark.parametrize("profile", list(PROFILES))
async def test_profile_installs_publishes_and_raises(profile, settings, pool, test_dsn, monkeypatch, capsys):
    monkeypatch.setenv("WULIAN_DB__DSN", test_dsn)
    assert await asyncio.to_thread(run_command, stream, ["stream", "add", "--profile", profile]) == 0
    created = orjson.loads(capsys.readouterr().out)
    assert created["created"] == profile and len(created["rule_ids"]) == len(PROFILES[profile]["default_rules"])
    region = f"p{uuid.uuid4().hex[:5]}"
    fleet = build_profile_fleet(profile, n=2, seed=3)
    t0 = (int(time.time()) // 3600 - 1) * 3600  # the last full hour, a sample a minute
    sent = 0
    async with running_ingestor(settings, pool) as ing:
        with MqttPublisher(mqtt_params(settings, client_id=f"prof-{uuid.uuid4().hex[:6]}")) as pub:
            for k in range(60):
                for dev in fleet:
                    doc = dev.sample((t0 + 60 * k) * 1_000_000_000)
                    pub.publish(f"wl/{region}/{profile}/{dev.device_id}/telemetry", orjson.dumps(doc))
                    sent += 1
            assert pub.wait_acked(30)
        await wait_until(lambda: ing.stats.messages + ing.stats.dead_letters >= sent, timeout=60, event=ing.committed)
        assert ing.stats.dead_letters == 0

        async def alert():
            async with pool.acquire() as con:
                return await con.fetch(
                    "SELECT a.device_id, r.definition->>'name' AS rule FROM alerts a JOIN rules r ON r.id = a.rule_id"
                    " WHERE a.region = $1 AND a.stream = $2", region, profile)
        await wait_until(alert)
        rows = await alert()
    assert (fleet[0].device_id, EXPECTED_RULE[profile]) in {(r["device_id"], r["rule"]) for r in rows}
    assert fleet[1].device_id not in {r["device_id"] for r in rows}, rows  # the healthy device raises nothing
    async with pool.acquire() as con:
        stored = await con.fetchval(
            "SELECT count(*) FROM readings r JOIN devices d ON d.id = r.device WHERE d.region = $1 AND d.stream = $2",
            region, profile)
    assert stored == sum(len(dev.sample(0)["values"]) for dev in fleet) * 60


def test_unknown_profile_is_refused_clearly(test_dsn, monkeypatch, capsys):
    from wulian.cli.commands import simulate

    monkeypatch.setenv("WULIAN_DB__DSN", test_dsn)
    assert run_command(stream, ["stream", "add", "--profile", "greenhouse"]) == 2
    assert "no profile 'greenhouse' (profiles: coldchain, charging, energy, equipment)" in capsys.readouterr().out
    assert run_command(simulate, ["simulate", "--profile", "coldchain,bogus", "--duration", "1"]) == 2
    assert "bogus" in capsys.readouterr().out
