"""The training grid a calibration serves (`calibrate.measure_paths`), and how many times it serves each part.

Per path and training repeat, `train_grid` serves through an executor: every primitive forced on one holder over
rows x chunk sizes (`TRAIN_*`; `--quick`: `QUICK_CHUNK_BLOCKS`, on a corpus of `quick_corpus_tokens`), scattered
fetches, batches of requests routed to one holder together and fetched, pairs routed to two holders at once, the
widest route batch, the idle ladder and one wide fetch, between speed probes; its trace is what every constant is
fitted to (`insitu`, `insitu_parallel`, `insitu_compute`). `Samples` says how many times each part is served
(`FULL`, `QUICK`) and whether several paths share out the shapes (`path_shapes`); `timed` adds up where the seconds
went (the results' `phase_s`).
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from qroute.calibration.shapes import (WARM_BUDGET_S, forced_executor, serve, serve_together, shaped_request, spanning_request,
                                      speed_probe, warm_up, wide_request)  # fmt: skip
from qroute.cost.model import PRIMITIVES

TRAIN_STEP_TOKENS = (1, 2, 8, 24)  # route exchanges from the smallest a decode step sends; validation uses 1, 4, 16
TRAIN_LOCAL_STEP_TOKENS = (2, 8)  # local re-prefills the chunk whatever the rows: fewer shapes suffice
TRAIN_BATCH, TRAIN_BATCH_STEP_TOKENS = 3, (2, 8)  # batches of 3 requests routed to one holder together, then fetched
# from it: `group_s` (the holder's attention; the requester's attention over moved KV and merges)
TRAIN_WIDE_ROUTE = (24, 6)  # step tokens, chunk blocks of one more batch of 3, routed only: the largest route exchange
# trained (3 x 24 x heads rows), a knot above validation's largest (3 x 16 x heads rows), which ran 13-17% above the
# line extrapolated from 3 x 8 (dev VM, 2026-11-27)
TRAIN_CHUNK_BLOCKS = (2, 6, 12, 20, 30)  # spans the sizes validation uses (4, 16, 32): re-prefill extrapolates badly
QUICK_CHUNK_BLOCKS = (2, 14, 30)
QUICK_CORPUS_TOKENS = 2048  # `calibrate --quick`'s corpus per holder (`quick_corpus_tokens`)
TRAIN_STEPS = 4  # validation uses 1 and 4; 4 steps give 3 warm route exchanges per layer and shape (2 gave 1)
IDLE_GAPS = (0.01, 0.03, 0.1, 0.3)  # seconds the holders sit idle before a route request of `idle_ladder`


@dataclass(frozen=True)
class Samples:
    """How many times a training pass serves what it times."""

    probe_reps: int = 5  # runs per primitive of each speed probe, median taken (under a second per probe on 2 cores;
    # 7 until 2026-11-28: two paths' 12 probes took 15 s of the default calibration's 2 minutes)
    fetch: int = 3  # a request makes one fetch record but steps x layers route records: fetches are served 3 times,
    # so that each shape's median resists a stall (beta moved 18.6% between repeats on the dev VM with one)
    idle: int = 2  # requests per gap of the idle ladder and training repeat (about 1 s per path and repeat)
    warm_budget_s: float = WARM_BUDGET_S  # the warm-up's speed probes stop after this long (`shapes.warm_up`)
    split_paths: bool = False  # several paths share out the grid's shapes (`path_shapes`) instead of each serving all
    rotate: bool = False  # with `split_paths`, the shares move on by one path each repeat: over the repeats every path
    # serves every shape (with 2 paths and 3 repeats each shape 1 or 2 times on a path, against 3 unsplit)
    rewarm: bool = True  # a repeat's later paths warm the machine up again (off: one probe opens the path, no more)

    def shares(self, shapes: list[tuple[int, int]], names: list[str], repeat: int) -> dict[str, list[tuple[int, int]]]:
        """The shapes each path in `names` serves in training repeat `repeat` (`path_shapes`)."""
        return path_shapes(shapes, names, self.split_paths, turn=repeat if self.rotate else 0)


FULL = Samples(split_paths=True, rotate=True, rewarm=False)
# Two paths (`calibrate --shm`) share out the shapes repeat by repeat, the shares rotating, and only each repeat's first
# pass warms up: 158.7-178.8 s with every shape on every path on the dev VM (3 instances; over the 2 minutes),
# 101.7-120.4 s shared, against 88.4-98.7 s for one path in turns (docs/measurements.md). `--every-shape` (the config's
# `every_shape`) sets the three flags back.
EVERY_SHAPE = dict(split_paths=False, rotate=False, rewarm=True)
QUICK = Samples(probe_reps=3, fetch=2, idle=1, warm_budget_s=1.0, split_paths=True, rewarm=False)
# `--quick` (and `--profile auto`): about 3 s less of its one pass on the dev VM with 3 instances. A warm-up on 2 cores
# runs its 8 probes (about 1.7 s): two in a row rarely agree within 5% there; on a GPU the 8 take well under a second,
# so the budget cuts only the CPU's. Two paths (`--quick --shm`) share out the shapes and warm up once: 39-48 s ->
# 25-29 s on the dev VM (docs/measurements.md)
IDLE_SHAPE = (2, 12)  # its step tokens and chunk blocks (a training shape)
WIDE_BLOCKS = 4  # x the largest training chunk: one fetch that large per pass, so the in-situ line spans ~4x more bytes


def quick_corpus_tokens(holders: int) -> int:
    """The corpus of `calibrate --quick` with `holders` holders: each prefills 2,048 tokens (against 4,096 with 2
    holders at 8,192, 8,192 with 1; 0.4 s a 512-token chunk on the dev VM) and still holds four 32-block chunks,
    which the wide fetch needs (`WIDE_BLOCKS` x 30 blocks)."""
    return QUICK_CORPUS_TOKENS * max(1, holders)


def train_shapes(blocks: tuple[int, ...] = TRAIN_CHUNK_BLOCKS) -> list[tuple[int, int]]:
    """The training grid's (step tokens, chunk blocks) shapes over chunks of `blocks` blocks."""
    return [(k, n) for k in TRAIN_STEP_TOKENS for n in blocks]


def path_shapes(shapes: list[tuple[int, int]], names: list[str], split: bool,
                turn: int = 0) -> dict[str, list[tuple[int, int]]]:  # fmt: skip
    """The training shapes each path in `names` serves: all of them, or with `split` a share of them (shape
    (k_i, n_j) of the grid to path (i + j + turn) mod paths, a diagonal pattern; `turn`, the training repeat where the
    shares rotate, moves each share on to the next path). A path's share still holds every step-token
    count and every chunk size, so each path's route exchanges and fetches span the sizes a full pass gives it (route
    bytes follow the step tokens, fetch bytes the chunk); the compute constants, fitted over every path's trace
    together, still see every shape. Where there are more paths than step-token counts or chunk sizes, a share could
    not hold them all: every path serves every shape."""
    ks, ns = sorted({k for k, _ in shapes}), sorted({n for _, n in shapes})
    if not split or len(names) < 2 or len(names) > min(len(ks), len(ns)):
        return {name: list(shapes) for name in names}
    share = lambda shape: (ks.index(shape[0]) + ns.index(shape[1]) + turn) % len(names)  # noqa: E731
    return {name: [shape for shape in shapes if share(shape) == p] for p, name in enumerate(names)}


@contextmanager
def timed(seconds: dict | None, phase: str):
    """Add the wall seconds of the block to `seconds[phase]` (nothing where `seconds` is None): where a calibration
    spends its time (the results' `phase_s`)."""
    t0 = time.perf_counter()
    try:
        yield
    finally:
        if seconds is not None:
            seconds[phase] = seconds.get(phase, 0.0) + time.perf_counter() - t0


def train_grid(world, shapes, advance, seed: int, path: str, probes: list | None = None, links: dict | None = None,
               ladder: bool = True, seconds: dict | None = None, samples: Samples = FULL,
               first: bool = True) -> list[dict]:  # fmt: skip
    """Serve the training grid on `path`, the executor's trace: per shape every primitive forced on one holder, a
    scattered fetch (every other block: the gather), for some shapes a batch of `TRAIN_BATCH` requests routed to one
    holder together (their rows in one message: `group_s`) and the same batch fetched (the requester's batched attention
    over moved KV and merges: their `group_s`), and with two holders or more a batch of two requests routed to
    two holders at once (the parallel exchange) and, for some shapes, a fetch from two holders at once; then a batch of
    `TRAIN_WIDE_ROUTE` routed (the largest route exchange), the idle ladder (`idle_ladder`, unless `ladder` is off)
    and a fetch `WIDE_BLOCKS` times the largest shape's blocks (`wide_request`), `samples.fetch` times; after
    `warm_pass` (its repeat's `first` pass or not)."""
    executor = forced_executor(world, links=links)
    executor.force_path = path
    largest = max(n for _, n in shapes)  # its first re-prefill allocates: 0.57 s, then 0.25 s (dev VM, 480 tokens)
    with timed(seconds, "warm_up"):
        warm_pass(executor, world, samples, first, largest, seed)
    executor.trace.clear()  # the warm-up's records are no measurement
    if probes is not None:
        with timed(seconds, "speed_probes"):
            probes.append(speed_probe(executor, world, reps=samples.probe_reps))
    holders = sorted(set(world.directory.holders))
    for i, (k, n) in enumerate(shapes):
        s = 1000 * (seed + 1) + i
        request = shaped_request(world, 1, k, n, TRAIN_STEPS, seed=s)
        for primitive in PRIMITIVES if k in TRAIN_LOCAL_STEP_TOKENS else ("route", "fetch"):
            with timed(seconds, primitive):
                for _ in range(samples.fetch if primitive == "fetch" else 1):
                    serve(executor, request, primitive)
        advance()
        with timed(seconds, "scattered"):
            serve(executor, shaped_request(world, 1, k, max(2, n // 2), TRAIN_STEPS, seed=s, stride=2), "fetch")
        with timed(seconds, "batches"):
            if k in TRAIN_BATCH_STEP_TOKENS:  # one message carrying several requests' rows (`group_s`)
                batch = [shaped_request(world, 1, k, n, TRAIN_STEPS, seed=s + 10 + j, on=holders[0], nth=j) for j in range(TRAIN_BATCH)]
                serve_together(executor, batch, "route")
                serve_together(executor, batch, "fetch")  # the requester's attention over moved KV and merges, batched
        with timed(seconds, "pairs"):
            if len(holders) > 1:
                pair = [shaped_request(world, 1, k, n, TRAIN_STEPS, seed=s + j, on=h) for j, h in enumerate(holders[:2])]
                serve_together(executor, pair, "route")
                if k in TRAIN_LOCAL_STEP_TOKENS:  # a fetch from two holders at once (its size does not depend on k)
                    serve(executor, spanning_request(world, k, n, 1, seed=s), "fetch")
        advance()
    k, n = TRAIN_WIDE_ROUTE[0], min(TRAIN_WIDE_ROUTE[1], largest)
    with timed(seconds, "batches"):
        serve_together(executor, [shaped_request(world, 1, k, n, TRAIN_STEPS, seed=1000 * (seed + 1) + 500 + j,
                                                 on=holders[0], nth=j) for j in range(TRAIN_BATCH)], "route")  # fmt: skip
    if ladder:
        idle = (IDLE_SHAPE[0], min(IDLE_SHAPE[1], largest))  # a grid of small chunks: its largest
        with timed(seconds, "idle_ladder"):
            idle_ladder(executor, world, shaped_request(world, 1, *idle, TRAIN_STEPS, seed=1000 * (seed + 1) + len(shapes) + 1),
                        samples=samples.idle)  # fmt: skip
    wide = wide_request(world, WIDE_BLOCKS * largest, seed=1000 * (seed + 1) + len(shapes))
    with timed(seconds, "fetch"):
        for _ in range(samples.fetch if wide is not None else 0):
            serve(executor, wide, "fetch")
    if probes is not None:  # and after: a machine whose speed moved during the training is told (`speed_spread`)
        with timed(seconds, "speed_probes"):
            probes.append(speed_probe(executor, world, reps=samples.probe_reps))
    return [r for r in executor.trace if r.get("kind") not in ("route", "fetch") or r.get("path") == path]


def warm_pass(executor, world, samples: Samples, first: bool, largest: int, seed: int) -> None:
    """Before a training pass: speed probes until the machine runs steady (`shapes.warm_up`, `samples.warm_budget_s`)
    and one re-prefill of `largest` blocks, whose first allocates; or, for a pass that is not its repeat's `first`
    where `samples` do not `rewarm`, one speed probe (the path's first exchanges), the machine warm from the pass
    before it."""
    rewarm = first or samples.rewarm
    warm_up(executor, world, budget_s=samples.warm_budget_s if rewarm else 0.0)
    if rewarm:
        serve(executor, shaped_request(world, 1, TRAIN_LOCAL_STEP_TOKENS[0], largest, 1, seed=999 + seed), "local")


def idle_ladder(executor, world, request, gaps=IDLE_GAPS, samples: int = FULL.idle) -> None:
    """Route `request` after the holders sat idle `gaps` seconds, `samples` times each, the requester computing
    meanwhile (the model's prefill, as it would serve other work): its first steps price how the wake-up grows with
    the holder's idle time (`cold_idle_s`, `first_step_idle_excess`); the grid's requests come back to back. Its
    records carry `ladder`: their later steps stalled more often than the grid's (on the dev VM 9.3% of the exchanges
    of the ladder's shape against 4.3% of the others'), and `insitu.stall_terms` leaves them out."""
    filler = torch.randint(0, world.model.config.vocab_size, (4,))
    for gap in gaps:
        for _ in range(samples):
            until = time.perf_counter() + gap
            while time.perf_counter() < until:
                world.model.prefill(filler)
            first = len(executor.trace)
            serve(executor, request, "route")
            for record in executor.trace[first:]:  # after an idle time: its later steps are no warm exchange's tail
                record["ladder"] = True
