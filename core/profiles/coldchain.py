"""Cold-chain trips and their temperature compliance.

A trip is what a cold-chain operator signs for: one waybill (运单) from dispatch to delivery. The
telematics unit reports ``trip`` = 1 while a waybill is in transit (set at dispatch by the TMS or the
driver's app, 0 at delivery sign-off), so a trip runs from the first ``trip = 1`` reading to the first
``trip = 0`` reading after it; one still running is *open* and ends, for now, at its latest reading.
(Door or ignition events are not trips: a reefer stops and opens for several drops on one waybill.)

Compliance is the share of the trip's time the compartment was inside the product's band (default
2-8 °C for chilled medicines and vaccines, GSP; frozen goods set their own per device). Each temperature
reading holds until the next, at most ``max_hold`` - time without a reading counts as *no data* and not
as compliant: an auditor accepts only recorded evidence.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from wulian.core.profiles.held import held_seconds

IN, OUT = 0, 1


@dataclass(frozen=True, slots=True)
class Trip:
    start_ns: int
    end_ns: int
    open: bool
    duration_s: float
    in_range_s: float
    out_of_range_s: float
    no_data_s: float
    compliance: float | None  # in_range_s / duration_s; None for a zero-length trip
    max_temp: float | None
    min_temp: float | None
    readings: int


def trip_spans(t_ns: np.ndarray, trip: np.ndarray) -> list[tuple[int, int, bool]]:
    """``(start_ns, end_ns, open)`` of each run of ``trip == 1`` readings (``t_ns`` ascending)."""
    t = np.asarray(t_ns, np.int64)
    on = np.asarray(trip) >= 0.5
    out = []
    i, n = 0, t.shape[0]
    while i < n:
        if not on[i]:
            i += 1
            continue
        j = i
        while j < n and on[j]:
            j += 1
        out.append((int(t[i]), int(t[j]) if j < n else int(t[j - 1]), j >= n))
        i = j
    return out


def trip_compliance(start_ns: int, end_ns: int, open_: bool, temp_t_ns: np.ndarray, temp: np.ndarray,
                    low: float, high: float, max_hold_ns: int) -> Trip:
    """The trip ``[start_ns, end_ns)`` against the band ``[low, high]`` (°C) from the temperature readings
    (ascending; readings before the start count for the part of their hold inside the trip)."""
    t = np.asarray(temp_t_ns, np.int64)
    v = np.asarray(temp, np.float64)
    codes = np.where((v >= low) & (v <= high), IN, OUT)
    secs = held_seconds(t, codes, start_ns, end_ns, max_hold_ns, 2)
    duration = (end_ns - start_ns) / 1e9
    inside = v[(t >= start_ns) & (t < end_ns)]
    n = int(inside.size)
    inside = inside[np.isfinite(inside)]
    return Trip(start_ns, end_ns, open_, duration, float(secs[IN]), float(secs[OUT]),
                max(duration - float(secs.sum()), 0.0), float(secs[IN]) / duration if duration > 0 else None,
                float(inside.max()) if inside.size else None, float(inside.min()) if inside.size else None, n)
