"""GB/T 12325-2008 supply-voltage deviation bands: (upper, lower) in % of nominal, lower <= 0 <= upper.

One band per voltage class; the per-sample voltage qualification and the day verdict both judge against
it, so a day with rate 1.0 always passes. Pure Python (no numpy/numba): the settings import it.

* 220 V single-phase: +7 % / -10 % (198.0-235.4 V).
* 20 kV and below, three-phase (10 kV): +/-7 %.
* 35 kV and above (§4.1): the absolute values of the positive and negative deviation add up to at most
  10 % of nominal (if both have the same sign, the larger one is judged). The standard fixes the sum, not
  the split; a supply point is assessed against a band whose ends add up to at most 10 %. The default
  +7 % / -3 % is the split grid companies commonly use for 35 kV supply points, not a figure of the
  standard (the project's standards notes, §5, give only the 10 % sum): set it per deployment.
"""
from __future__ import annotations

import math

V220_BAND = (7.0, -10.0)
KV20_BAND = (7.0, -7.0)
KV35_SUM_MAX_PCT = 10.0
KV35_DEFAULT_BAND = (7.0, -3.0)


def check_kv35_band(upper: float, lower: float) -> tuple[float, float]:
    """The 35 kV band as (upper, lower), or ValueError when it is not one GB/T 12325 §4.1 allows."""
    if not (math.isfinite(upper) and math.isfinite(lower)):
        raise ValueError(f"35 kV band must be finite, got +{upper} % / {lower} %")
    if upper < 0 or lower > 0:
        raise ValueError(f"35 kV band needs upper >= 0 >= lower, got upper {upper} %, lower {lower} %")
    if upper - lower > KV35_SUM_MAX_PCT + 1e-9:
        raise ValueError(f"35 kV band +{upper} % / {lower} %: |upper| + |lower| = {upper - lower:g} % exceeds "
                         f"the {KV35_SUM_MAX_PCT:g} % of GB/T 12325-2008 §4.1")
    return float(upper), float(lower)
