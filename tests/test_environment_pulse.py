"""Pulse tracing on the Lianjiang: a simulated discharge enters between two stations, travels
downstream at the flow-dependent velocity with dilution and spreading; the trace must name that segment."""
from __future__ import annotations

import numpy as np
import pytest

from wulian.core.environment.pulse import PulseParams, trace_pulses
from wulian.core.environment.river import River, RiverStation

HOUR = 3_600_000_000_000
KMS = (0.0, 12.0, 25.0, 40.0, 58.0, 70.0, 85.0)
RIVER = River("Lianjiang", tuple(RiverStation(f"LJ{i}", km) for i, km in enumerate(KMS)))


def simulate(entry_km: float, entry_h: float, flow: float, n_h: int = 240, seed: int = 0,
             mass: float = 3.0, missing: tuple[int, ...] = ()) -> np.ndarray:
    """NH3-N (mg/L) per station and hour: a noisy baseline plus a Gaussian slug from ``entry_km``."""
    rng = np.random.default_rng(seed)
    vals = rng.uniform(0.3, 0.6, len(KMS))[:, None] + rng.normal(0.0, 0.03, (len(KMS), n_h))
    t = np.arange(n_h)
    for i, km in enumerate(KMS):
        if km < entry_km:
            continue
        dist_m = (km - entry_km) * 1000.0
        arrival = entry_h + RIVER.travel_time_s(0, 1, flow) * dist_m / ((KMS[1] - KMS[0]) * 1000.0) / 3600.0
        sigma = 1.0 + dist_m / 20_000.0  # spreads as it travels
        vals[i] += mass / (1.0 + dist_m / 15_000.0) / sigma * np.exp(-0.5 * ((t - arrival) / sigma) ** 2)
    for i in missing:
        vals[i, :] = np.nan
    return vals


@pytest.mark.parametrize("entry_km,upstream,downstream", [
    (5.0, "LJ0", "LJ1"), (30.0, "LJ2", "LJ3"), (50.0, "LJ3", "LJ4"), (62.0, "LJ4", "LJ5"), (75.0, "LJ5", "LJ6"),
])
def test_entry_segment_found(entry_km, upstream, downstream):
    vals = simulate(entry_km, 120.0, flow=50.0, seed=int(entry_km))
    events = trace_pulses(RIVER, vals, 0, HOUR, 50.0, PulseParams(), item="NH3_N")
    assert len(events) == 1
    ev = events[0]
    assert (ev.entry_upstream, ev.entry_downstream) == (upstream, downstream)
    assert ev.confidence > 0.4
    assert ev.entry_km == (KMS[int(upstream[2:])], KMS[int(downstream[2:])])
    assert ev.item == "NH3_N"


def test_pulse_from_above_the_network():
    vals = simulate(-1.0, 120.0, flow=50.0, seed=3)
    ev = trace_pulses(RIVER, vals, 0, HOUR, 50.0)[0]
    assert ev.entry_upstream is None and ev.entry_downstream == "LJ0" and ev.entry_km[0] is None


def test_travel_time_depends_on_flow():
    slow, fast = RIVER.travel_time_s(0, 6, 5.0), RIVER.travel_time_s(0, 6, 200.0)
    assert slow > 2 * fast
    assert RIVER.travel_time_s(2, 3, 50.0) == pytest.approx(15_000.0 / RIVER.velocity(2, 50.0))
    # Low flow: the pulse arrives much later; tracing with the right flow still finds the segment.
    vals = simulate(30.0, 40.0, flow=5.0, n_h=300, seed=5)
    ev = trace_pulses(RIVER, vals, 0, HOUR, 5.0)[-1]
    assert (ev.entry_upstream, ev.entry_downstream) == ("LJ2", "LJ3")


def test_station_without_data_widens_the_segment():
    vals = simulate(30.0, 120.0, flow=50.0, seed=30, missing=(2,))
    ev = trace_pulses(RIVER, vals, 0, HOUR, 50.0)[0]
    assert (ev.entry_upstream, ev.entry_downstream) == ("LJ1", "LJ3")
    assert any(e.station_id == "LJ2" and e.seen is None for e in ev.evidence)


def test_no_pulse_no_event():
    rng = np.random.default_rng(1)
    vals = 0.5 + rng.normal(0, 0.03, (len(KMS), 240))
    assert trace_pulses(RIVER, vals, 0, HOUR, 50.0) == []


def test_stations_must_be_ordered():
    with pytest.raises(ValueError):
        River("bad", (RiverStation("a", 10.0), RiverStation("b", 5.0)))


def test_warmup_runs():
    from wulian.core.environment.warmup import warmup

    assert warmup() is None
