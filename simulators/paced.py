"""A city mix published at its real rates, time-compressed by a factor the caller changes while it runs
(``wulian loadtest``). Runs in a process of its own; talks to its parent through shared counters only.

Simulated time advances ``factor`` times faster than the wall clock, from ``sim_start_ns`` (in the
past, so no timestamp is ever ahead of the clock ingest checks them against). A class's messages are
evenly spaced in simulated time; message ``m`` of a process's share goes to its ``m mod n``-th device,
so each device's timestamps are ``simulated_period_s`` apart and never repeat. Every device first sends
one message stamped a period before the start (``m`` from ``-n``), at once, whatever the factor: a
deployment's devices have all reported before, so the steps measure the steady state, not each
device's first contact (registry lookup, alarm series). A publisher that cannot
keep up falls behind (``due`` > ``published``) and catches up later: the parent sees it as offered but
not published, never as silently dropped.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from wulian.ingest.mqtt_client import MqttParams, MqttPublisher
from wulian.ingest.topics import topic_for
from wulian.simulators.city_mix import CityMix, PayloadSource, device_ids

log = logging.getLogger(__name__)

TICK_S = 0.005  # how often the schedule is looked at
_CHECK_EVERY = 256  # messages between looks at the stop flag inside a burst


@dataclass
class SharedCounters:
    """multiprocessing shared values (created by the parent; any context's ``Value``/``Array``/``Event``):
    ``factor`` (d), per class ``due`` and ``published`` (q arrays), ``acked`` and ``refused`` (q),
    ``sim_s`` (d, simulated seconds elapsed), ``ready``/``stop`` events, ``error`` (a short message)."""

    factor: Any
    due: Any
    published: Any
    acked: Any
    refused: Any
    sim_s: Any
    ready: Any
    stop: Any
    error: Any


@dataclass
class _Lane:
    """One class's part of this process's share."""

    index: int
    topics: list[str]
    devices: list[int]
    source: PayloadSource
    spacing_ns: float  # simulated ns between two messages of this lane
    sent: int = 0  # the next message's number; starts at -len(devices): the first contact of each

    def __post_init__(self) -> None:
        self.sent = -len(self.devices)


def _lanes(mix: CityMix, share: int, shares: int, prefix: str, seed: int) -> list[_Lane]:
    lanes = []
    for k, cls in enumerate(mix.classes):
        devices = list(range(share, cls.simulated_devices, shares))
        if not devices:
            continue
        ids = device_ids(cls)
        topics = [topic_for(mix.region, cls.stream.value, ids[i], cls.kind.value, prefix) for i in devices]
        per_s = len(devices) / cls.simulated_period_s
        lanes.append(_Lane(k, topics, devices, PayloadSource(cls, devices, seed), 1e9 / per_s))
    return lanes


def run_paced(mix: CityMix, params: MqttParams, prefix: str, sim_start_ns: int, counters: SharedCounters,
              share: int = 0, shares: int = 1, window: int | None = None, seed: int = 7) -> None:
    """Publish this process's share (every ``shares``-th device of each class) until ``stop``."""
    try:
        lanes = _lanes(mix, share, shares, prefix, seed)
        with MqttPublisher(params, window=window) as pub:
            counters.ready.set()
            _loop(lanes, pub, sim_start_ns, counters)
            pub.wait_acked(60)
            counters.acked.value, counters.refused.value = pub.acked, pub.refused
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which stops the run with it
        log.exception("paced publisher failed")
        counters.error.value = f"{type(exc).__name__}: {exc}"[:200].encode()
        counters.ready.set()


def _loop(lanes: list[_Lane], pub: MqttPublisher, sim_start_ns: int, c: SharedCounters) -> None:
    sim_ns = 0.0
    t_last = time.monotonic()
    while not c.stop.is_set():
        now = time.monotonic()
        sim_ns += (now - t_last) * c.factor.value * 1e9
        t_last = now
        c.sim_s.value = sim_ns / 1e9
        for lane in lanes:
            due = int(sim_ns / lane.spacing_ns)
            n = len(lane.devices)
            c.due[lane.index] = due + n  # counters count the first-contact messages too
            while lane.sent < due:
                m = lane.sent
                ts = sim_start_ns + int(m * lane.spacing_ns)
                pub.publish(lane.topics[m % n], lane.source.payload(lane.devices[m % n], ts))
                lane.sent = m + 1
                if lane.sent % _CHECK_EVERY == 0:
                    c.published[lane.index] = lane.sent + n
                    if c.stop.is_set():
                        break
            c.published[lane.index] = lane.sent + n
        c.acked.value, c.refused.value = pub.acked, pub.refused
        time.sleep(TICK_S)
