"""Chaos run, short: kill -9 of ingest (twice), graceful broker restart, PostgreSQL down ~5 s, kill -9 of
both TCP gateways, each while JSON sources publish at load and HJ 212 stations / JT/T 808 terminals
report through the gateways; nothing the broker (or a gateway) acknowledged may be lost or stored
twice, and the alerts of a sawtooth rule must match the reference transitions exactly."""
import numpy as np

from wulian.ingest.chaos.faults import KillIngest, RestartBroker, RestartGateway, StopDatabase
from wulian.ingest.chaos.run import ChaosConfig, run_chaos
from wulian.ingest.chaos.sources import SAW_PERIOD, expected_transitions, saw_value
from wulian.ingest.chaos.verify import alerts_consistent, count_loss


def test_sawtooth_reference_raises_and_clears_once_per_tooth():
    seqs = np.arange(3 * SAW_PERIOD, dtype=np.int64)
    raises, clears = expected_transitions(seqs)
    assert raises.tolist() == [11, 31, 51] and clears.tolist() == [20, 40]
    assert not np.isin(saw_value(seqs), [80.0, 100.0]).any()  # no sample on a threshold
    # a gap over a crossing moves the raise to the next stored point above the threshold
    raises, _ = expected_transitions(np.delete(seqs, [11, 12]))
    assert raises.tolist() == [13, 31, 51]


def test_loss_and_duplicate_counting():
    acked = {"a": np.array([0, 1, 2, 3]), "b": np.array([0, 1])}
    stored = {"a": np.array([0, 1, 1, 3, 4]), "b": np.array([0, 1])}
    c = count_loss(acked, stored)
    assert (c["published"], c["stored"], c["lost"], c["duplicates"], c["stored_not_acked"]) == (6, 6, 1, 1, 1)
    assert not alerts_consistent(dict(missing_raises=0, unexpected_alerts=0, missing_clears=1, missing_events=0,
                                      duplicate_open=0))


async def test_chaos_quick_nothing_lost_nothing_duplicated():
    cfg = ChaosConfig.quick(faults=[KillIngest(times=2, every_s=3.0), RestartBroker(down_s=1.0),
                                    StopDatabase(down_s=5.0), RestartGateway(down_s=1.0)], field_devices=5)
    result = await run_chaos(cfg)
    by_fault = {f["fault"]: f for f in result["faults"]}
    assert set(by_fault) == {"kill_ingest", "restart_broker", "stop_database", "restart_gateway"}
    for name, f in by_fault.items():
        assert f["published"] > 500, (name, f)  # the load really flowed through the fault
        assert f["never_acked"] == 0, (name, f)
        assert f["lost"] == 0 and f["duplicates"] == 0 and f["partial"] == 0, (name, f)
        assert f["stored"] >= f["published"], (name, f)
        assert f["alerts"]["expected_raises"] > 0 and f["alerts_consistent"], (name, f["alerts"])
        assert not f["ingest_exited"], (name, f)
        assert set(f["field"]) == {"hj212", "jt808"}, (name, f)
        for proto, g in f["field"].items():  # ground truth: what the gateway answered
            assert g["published"] > 0 and g["lost"] == 0 and g["duplicates"] == 0, (name, proto, g)
    assert result["ok"]


def test_pending_reference_waits_the_pending_steps_and_restarts_on_a_gap_below():
    seqs = np.arange(2 * SAW_PERIOD, dtype=np.int64)
    raises, clears = expected_transitions(seqs, pending_steps=5)
    assert raises.tolist() == [16, 36] and clears.tolist() == [20]
    # readings 12..14 lost: the wait starts at 11 and still ends at 16 (event time, not reading count)
    raises, _ = expected_transitions(np.delete(seqs, [12, 13, 14]), pending_steps=5)
    assert raises.tolist()[:1] == [16]
    # a tooth whose stored readings above the threshold span less than the pending time never raises
    raises, clears = expected_transitions(np.delete(seqs, [16, 17, 18, 19]), pending_steps=5)
    assert raises.tolist() == [36] and clears.tolist() == []


def test_takeover_p99_over_the_faults_that_cause_takeover():
    from wulian.ingest.chaos.cluster import takeover_p99

    assert takeover_p99([{"fault": "kill_router"}]) is None
    assert takeover_p99([{"takeover_s": [1.0, 2.0]}, {"takeover_s": [3.0]}, {"fault": "x"}]) == 2.98
