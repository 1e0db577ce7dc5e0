"""Streaming latency statistics in bounded memory: an exact count, sum, min and max, and a histogram
with logarithmic bins (each `ratio` wide), so that any percentile is known to within half a bin."""

from __future__ import annotations

import math

from qroute.errors import require


class LogHistogram:
    """Values in `[lo, hi]` seconds (clamped), bins growing by `ratio`: ~2,500 bins for 1e-7..1e4 s at 1%."""

    def __init__(self, lo: float = 1e-7, hi: float = 1e4, ratio: float = 1.01) -> None:
        require(0 < lo < hi and ratio > 1, f"histogram lo={lo}, hi={hi}, ratio={ratio}: expected 0 < lo < hi, ratio > 1")
        self.lo, self.ratio = lo, ratio
        self._scale = 1.0 / math.log(ratio)
        self._log_lo = math.log(lo)
        self.counts = [0] * (int(math.log(hi / lo) * self._scale) + 2)
        self.n, self.total, self.min, self.max = 0, 0.0, math.inf, 0.0

    def add(self, value: float, count: int = 1) -> None:
        """Record `count` observations of `value` seconds."""
        self.n += count
        self.total += value * count
        if value < self.min:
            self.min = value
        if value > self.max:
            self.max = value
        i = int((math.log(value) - self._log_lo) * self._scale) if value > self.lo else 0
        self.counts[min(i, len(self.counts) - 1)] += count

    @property
    def mean(self) -> float:
        return self.total / self.n if self.n else 0.0

    def percentile(self, q: float) -> float:
        """The `q`-th percentile (0..100): the geometric middle of its bin, within [min, max]."""
        if not self.n:
            return 0.0
        rank, seen = q / 100.0 * self.n, 0
        for i, c in enumerate(self.counts):
            seen += c
            if c and seen >= rank:
                return min(max(self.lo * self.ratio ** (i + 0.5), self.min), self.max)
        return self.max

    def cdf(self, points: int = 64) -> list[tuple[float, float]]:
        """(seconds, fraction of observations <= seconds) at up to `points` bin edges between min and max."""
        if not self.n:
            return []
        used = [i for i, c in enumerate(self.counts) if c]
        step = max(1, (used[-1] - used[0] + 1) // points)
        out, seen = [], 0
        for i in range(used[0], used[-1] + 1):
            seen += self.counts[i]
            if (i - used[0]) % step == 0 or i == used[-1]:
                out.append((min(self.lo * self.ratio ** (i + 1), self.max), seen / self.n))
        return out
