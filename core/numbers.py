"""Numbers as nullable columns and alert values take them."""
from __future__ import annotations

import math


def finite_or_none(x) -> float | None:
    """``float(x)``, or None for None, NaN and ±inf (what goes into nullable columns and alert values)."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None
