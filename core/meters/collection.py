"""Collection success rate (采集成功率) per concentrator and China day.

rate = sum over the concentrator's meters of min(slots with a reading, expected) /
       (meters on the concentrator x expected), expected = slots per day (96 for 15-minute collection).
A meter that sent nothing counts fully as missed; duplicates within a slot count once.
"""
from __future__ import annotations

import numpy as np

from wulian.core.meters.consumption import Consumption, MeterTable


def success_rate(c: Consumption, meters: MeterTable, expected_per_day: int = 96) -> np.ndarray:
    """(n_concentrators, n_days) success rate in [0, 1]; NaN for a concentrator with no meters."""
    conc = np.asarray(meters.concentrator, np.int64)
    n_conc = int(conc.max()) + 1 if len(conc) else 0
    got = np.minimum(c.day_slots, expected_per_day).astype(np.float64)
    num = np.stack([np.bincount(conc, weights=got[:, d], minlength=n_conc) for d in range(got.shape[1])], axis=1)
    den = np.bincount(conc, minlength=n_conc)[:, None] * float(expected_per_day)
    out = np.full(num.shape, np.nan)
    np.divide(num, den, out=out, where=den > 0)
    return out
