"""Per-key token buckets: ``rate`` requests/s sustained, ``burst`` at once. In-process (one API worker
holds its own buckets; run one bucket store per process or put a shared one in front)."""
from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass
class TokenBuckets:
    rate: float
    burst: float
    _state: dict[str, tuple[float, float]] = field(default_factory=dict)  # key -> (tokens, last time)

    def take(self, key: str, now: float | None = None) -> float:
        """0.0 when allowed, else the seconds to wait before the next request would be."""
        if self.rate <= 0:
            return 0.0
        now = time.monotonic() if now is None else now
        tokens, last = self._state.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if tokens >= 1.0:
            self._state[key] = (tokens - 1.0, now)
            return 0.0
        self._state[key] = (tokens, now)
        if len(self._state) > 100_000:  # forget idle keys (they refill to a full bucket anyway)
            cutoff = now - self.burst / self.rate
            self._state = {k: v for k, v in self._state.items() if v[1] >= cutoff}
        return (1.0 - tokens) / self.rate
