"""Online calibration: rescale a profile's predictions by how the machine runs now.

A profile is measured once, but the machine's speed moves: on the dev VM the same warm
16-row route exchange took 0.56 to 0.81 ms in consecutive minutes, and a whole validation
sweep ran ~10% slower than the calibration just before it. `OnlineScale` keeps, per
primitive and phase group, the ratio measured / predicted of the last `window` requests
served, and scales the next prediction by their median (clipped to `clip`). It learns only
from requests already finished, never from the one it predicts.

Pure bookkeeping: no clocks, no torch. `qroute validate` replays its own runs through it in
the order they ran (`online_predictions`) and reports the error beside the static
profile's. Attached to a `CostModel` (`CostModel.online`), it rescales what the planner
prices for each primitive (`phases`), and the executor feeds it the requests it serves
(`Executor.learn`): `qroute demo --online` plans with it.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from statistics import median

from qroute.cost.model import Phases
from qroute.errors import QrouteError, positive_int

GROUPS = ("network_s", "compute_s", "merge_s")


@dataclass
class OnlineScale:
    """Ratios measured / predicted of the last `window` requests per (key, phase group); `key` is the primitive."""

    window: int = 16
    clip: tuple[float, float] = (0.5, 2.0)
    _ratios: dict = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        positive_int("online window", self.window)
        lo, hi = self.clip
        if not 0 < lo <= 1 <= hi:
            raise QrouteError(f"online clip {self.clip!r}: expected (lo, hi) with 0 < lo <= 1 <= hi")

    def observe(self, key: str, predicted: dict[str, float], measured: dict[str, float]) -> None:
        """One finished request: its predicted and measured seconds per phase group."""
        for g in GROUPS:
            if predicted.get(g, 0.0) > 0 and measured.get(g, 0.0) > 0:
                self._ratios.setdefault((key, g), deque(maxlen=self.window)).append(measured[g] / predicted[g])

    def factor(self, key: str, group: str) -> float:
        """The median recent ratio (1.0 before any request of this key)."""
        ratios = self._ratios.get((key, group))
        if not ratios:
            return 1.0
        lo, hi = self.clip
        return min(hi, max(lo, median(ratios)))

    def phases(self, key: str, phases: Phases) -> Phases:
        """`phases` of primitive `key` rescaled: probe, transfer and return by the network factor, compute and merge
        by theirs (scalars or arrays alike)."""
        n, c, m = (self.factor(key, g) for g in GROUPS)
        return Phases(phases.probe * n, phases.transfer * n, phases.compute * c, phases.ret * n, phases.merge * m)

    def predict(self, key: str, predicted: dict[str, float]) -> dict[str, float]:
        """`predicted` (seconds per phase group) rescaled; `total_s` their sum."""
        out = {g: predicted.get(g, 0.0) * self.factor(key, g) for g in GROUPS}
        return {**out, "total_s": sum(out.values())}


def online_predictions(runs: list[tuple[str, dict, dict]], window: int = 16) -> list[dict[str, float]]:
    """Replay requests in the order they ran, each `(key, predicted, measured)` (phase groups): the prediction an
    `OnlineScale` fed with every earlier request would have made for each."""
    scale = OnlineScale(window)
    out = []
    for key, predicted, measured in runs:
        out.append(scale.predict(key, predicted))
        scale.observe(key, predicted, measured)
    return out
