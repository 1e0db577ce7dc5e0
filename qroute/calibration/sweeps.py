"""Message-size sweeps over one path, in the style of the OSU micro-benchmarks.

latency: ping-pong (osu_latency): send `size` bytes, the peer echoes them; per size the
         round trip's median, p10 and p90 over many repetitions (OSU prints half of it).
bandwidth: streaming (osu_bw): post `window` sends of `size` bytes back to back, the peer
         acknowledges the last; rate = window * size / time.
Each repetition may run a `between` callable first (the model's compute, as in a decode
step), so that what is timed is an exchange in the state the runtime makes them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from qroute.calibration.fit import robust_median
from qroute.runtime import transport
from qroute.runtime.holder import ACK, PING, PONG, STREAM

LATENCY_SIZES = tuple(8 * 4**i for i in range(11))  # 8 B .. 8 MiB
BANDWIDTH_SIZES = tuple(1024 * 4**i for i in range(7))  # 1 KiB .. 4 MiB


@dataclass(frozen=True)
class SweepRow:
    """One message size: seconds (median, p10, p90, after outlier removal for the median) over `n` repetitions."""

    size: int
    median_s: float
    p10_s: float
    p90_s: float
    n: int

    def as_dict(self) -> dict:
        return {"size": self.size, "median_s": self.median_s, "p10_s": self.p10_s, "p90_s": self.p90_s, "n": self.n}


def _row(size: int, samples: list[float]) -> SweepRow:
    x = np.asarray(samples)
    return SweepRow(size, robust_median(x), float(np.percentile(x, 10)), float(np.percentile(x, 90)), len(samples))


def ping_pong(peer: int, payload: list[torch.Tensor], group=None) -> float:
    """Seconds of one PING/PONG round trip."""
    t0 = time.perf_counter()
    transport.send(peer, PING, [], payload, group)
    msg = transport.recv(peer, group)
    if msg.tensors and msg.tensors[0].is_cuda:
        torch.cuda.synchronize()  # the reply's payload frame has landed, not only been posted
    elapsed = time.perf_counter() - t0
    if msg.kind != PONG:
        raise RuntimeError(f"expected PONG from {peer}, got kind {msg.kind}")
    return elapsed


def latency_sweep(
    peer: int, sizes: Sequence[int] = LATENCY_SIZES, reps: int = 30, warmup: int = 3,
    between: Callable[[], object] | None = None, group=None, on_size: Callable[[int], None] | None = None,
    rows: list | None = None,
) -> list[SweepRow]:  # fmt: skip
    """Ping-pong round trips per message size (`size` bytes each way), appended to `rows` as they are measured
    (so a caller keeps what was measured when a later size fails)."""
    rows = [] if rows is None else rows
    for size in sizes:
        payload = [torch.zeros(size, dtype=torch.uint8, device=transport.device())] if size else []
        samples = []
        for i in range(warmup + reps):
            if between is not None:
                between()
                _settle()
            t = ping_pong(peer, payload, group)
            if i >= warmup:
                samples.append(t)
        rows.append(_row(size, samples))
        if on_size:
            on_size(size)
    return rows


def _settle() -> None:
    """Wait for the GPU work `between` queued: an exchange's first copy or NCCL call waits for it on the stream, and
    the round trip would be timed with it (no-op without CUDA). The runtime's exchanges start synchronized too."""
    if torch.cuda.is_initialized():
        torch.cuda.synchronize()


def stream(peer: int, payload: torch.Tensor, window: int, group=None) -> float:
    """Seconds to stream `window` messages and get the acknowledgement of the last."""
    t0 = time.perf_counter()
    works = [transport.isend(peer, STREAM, [window - 1 - i], [payload], group) for i in range(window)]
    msg = transport.recv(peer, group)
    for w in works:
        transport.wait_all(w)
    elapsed = time.perf_counter() - t0
    if msg.kind != ACK:
        raise RuntimeError(f"expected ACK from {peer}, got kind {msg.kind}")
    return elapsed


def bandwidth_sweep(
    peer: int, sizes: Sequence[int] = BANDWIDTH_SIZES, window: int = 16, reps: int = 5, group=None,
    on_size: Callable[[int], None] | None = None, rows: list | None = None,
) -> list[dict]:  # fmt: skip
    """Streaming rate per message size: `{size, MBps (median), MBps_p10, MBps_p90, n}`, appended to `rows`."""
    out = [] if rows is None else rows
    for size in sizes:
        payload = torch.zeros(size, dtype=torch.uint8, device=transport.device())
        stream(peer, payload, window, group)  # warm-up
        times = np.array([stream(peer, payload, window, group) for _ in range(reps)])
        rates = window * size / times / 1e6
        out.append({"size": size, "MBps": float(np.median(rates)), "MBps_p10": float(np.percentile(rates, 10)),
                    "MBps_p90": float(np.percentile(rates, 90)), "n": reps})  # fmt: skip
        if on_size:
            on_size(size)
    return out
