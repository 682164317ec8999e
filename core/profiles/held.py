"""Time a sampled signal spends in each state: a reading holds until the next one, but never longer than
``max_hold`` (a device silent beyond that is *unknown*, not still in its last state - an offline charger
is not charging)."""
from __future__ import annotations

import numpy as np

from wulian.core.timebase import NS_PER_S


def held_seconds(t_ns: np.ndarray, codes: np.ndarray, start_ns: int, end_ns: int, max_hold_ns: int,
                 n_codes: int) -> np.ndarray:
    """Seconds in ``[start_ns, end_ns)`` spent in each code ``0..n_codes-1`` (float64[n_codes]).

    ``t_ns`` ascending; ``codes`` int per reading (outside ``0..n_codes-1``: counted nowhere). Readings
    before ``start_ns`` count for the part of their hold inside the window."""
    t = np.asarray(t_ns, np.int64)
    c = np.asarray(codes, np.int64)
    if t.shape[0] == 0:
        return np.zeros(n_codes)
    hold_end = t + max_hold_ns
    hold_end[:-1] = np.minimum(hold_end[:-1], t[1:])
    lo = np.maximum(t, start_ns)
    hi = np.minimum(hold_end, end_ns)
    dur = np.maximum(hi - lo, 0)
    ok = (c >= 0) & (c < n_codes)
    return np.bincount(c[ok], weights=dur[ok].astype(np.float64), minlength=n_codes)[:n_codes] / NS_PER_S
