"""Requests of a chosen shape, served for real: what in-situ calibration and validation run."""

from __future__ import annotations

import time

import torch

from qroute.errors import QrouteError
from qroute.runtime.executor import Executor, Session
from qroute.workload.agents import AgentRequest


def shaped_request(world, holders: int, step_tokens: int, blocks: int, steps: int, seed: int, stride: int = 1,
                   on: int | None = None, nth: int = 0) -> AgentRequest:  # fmt: skip
    """A request over `blocks` blocks of a chunk (its first ones, or every `stride`-th: a scattered selection) spread
    over exactly `holders` holders (all on holder `on` if given); rows per layer = step_tokens x heads. The first
    chunk that fits, or its `nth` (counted round the fitting chunks where there are fewer)."""
    bs = world.corpus.block_size
    fits = []
    for chunk in world.corpus.chunks:
        ids = list(chunk.blocks(bs))[: blocks * stride : stride]
        by_holder = world.directory.by_holder(ids)
        if len(ids) == blocks and len(by_holder) == holders and (on is None or set(by_holder) == {on}):
            fits.append((chunk, ids))
            if len(fits) > nth:
                break
    if fits:
        chunk, ids = fits[nth % len(fits)]
        return _request(world, chunk, ids, step_tokens, steps, seed)
    where = f" on holder {on}" if on is not None else ""
    raise QrouteError(f"no chunk with {blocks} blocks (stride {stride}) on {holders} holders{where}: expected a larger corpus")


def spanning_request(world, step_tokens: int, blocks: int, steps: int, seed: int) -> AgentRequest | None:
    """A request whose selection spans two holders (the first `blocks // 2` blocks of a chunk on one holder and as many
    of a later chunk on another): its fetch asks both at once, which whole-chunk placement gives no single chunk to
    do. For calibration only (its attention is not that of any one chunk); None with fewer than 2 holders."""
    half, bs = max(1, blocks // 2), world.corpus.block_size
    firsts: dict[int, tuple] = {}  # holder -> (its first chunk with `half` blocks, those blocks)
    for chunk in world.corpus.chunks:
        ids = list(chunk.blocks(bs))[:half]
        by_holder = world.directory.by_holder(ids)
        if len(ids) == half and len(by_holder) == 1:
            firsts.setdefault(next(iter(by_holder)), (chunk, ids))
    if len(firsts) < 2:
        return None
    (chunk, a), (_, b) = sorted(firsts.values(), key=lambda c: c[0].first_block)[:2]
    return _request(world, chunk, a + b, step_tokens, steps, seed)


def wide_request(world, blocks: int, seed: int) -> AgentRequest | None:
    """A request over `blocks` blocks of one holder, whole chunks of it in corpus order (a fetch larger than any one
    chunk: calibration's in-situ line then spans sizes wide enough to fix beta). For calibration only (its attention
    is not that of any one chunk); None where no holder has that many."""
    bs, taken = world.corpus.block_size, {}
    for chunk in world.corpus.chunks:
        ids = list(chunk.blocks(bs))
        by_holder = world.directory.by_holder(ids)
        if len(by_holder) == 1:
            (h,) = by_holder
            first, got = taken.setdefault(h, (chunk, []))
            got += ids[: blocks - len(got)]
            if len(got) == blocks:
                return _request(world, first, got, 1, 1, seed)
    return None


def _request(world, chunk, blocks: list[int], step_tokens: int, steps: int, seed: int) -> AgentRequest:
    """An agent request over `blocks` (attributed to `chunk`) with a 16-token task drawn from `seed`."""
    g = torch.Generator().manual_seed(seed)
    task = torch.randint(0, world.model.config.vocab_size, (16,), generator=g)
    return AgentRequest(seed, task, int(task[0]), chunk.id, tuple(blocks), chunk.tokens.numel(), steps, False, step_tokens)


def serve(executor: Executor, request: AgentRequest, primitive: str) -> Session:
    """Open the request with `primitive` forced (or the predicate's choice) and decode all its steps."""
    return serve_together(executor, [request], primitive)[0]


def serve_together(executor: Executor, requests: list[AgentRequest], primitive: str) -> list[Session]:
    """Open every request with `primitive` forced, then decode them as one batch (their rows for a holder share a
    message; holders of different requests are asked in parallel). The requests share their number of steps."""
    sessions = [executor.open(r, primitive) for r in requests]
    for _ in range(requests[0].steps):
        executor.step(sessions)
    return sessions


def forced_executor(world, rank: int = 0, links: dict | None = None) -> Executor:
    """An executor for requests served with a primitive chosen by the caller (calibration, speed probes, warm-up):
    its plans' predictions are unused, so any profile prices them; the paths it opened are used as they are."""
    from qroute.cost import CostModel, load_profile

    cost = CostModel(world.geometry, load_profile("published-h100"))
    return Executor(rank, world.model, world.corpus, world.directory, cost, links=links)


PROBE = (2, 6, 2)  # step tokens, blocks, steps of the speed probe: small, on one holder
WARM_TOL, WARM_ROUNDS, WARM_BUDGET_S = 0.05, 8, 20.0


def warm_up(executor: Executor, world, tol: float = WARM_TOL, rounds: int = WARM_ROUNDS,
            budget_s: float = WARM_BUDGET_S) -> list[dict[str, float]]:  # fmt: skip
    """Speed probes (one run each, timed for nothing) until two in a row agree within `tol` on every primitive, or
    `rounds` probes or `budget_s` seconds after the first: the probes seen. A GPU idles at a fraction of its clock
    and raises it only under sustained load (the H100s here: 345 of 1980 MHz, seen flipping between the two under
    light load), and first uses connect NCCL channels and load kernels (the first probe, however long it takes);
    timing any of that would price the cold machine."""
    probes = [speed_probe(executor, world, reps=1)]
    t0 = time.perf_counter()
    while len(probes) < rounds and time.perf_counter() - t0 < budget_s:
        probes.append(speed_probe(executor, world, reps=1))
        last, now = probes[-2], probes[-1]
        if all(abs(now[p] - last[p]) <= tol * last[p] for p in now):
            break
    return probes


def speed_probe(executor: Executor, world, reps: int = 3) -> dict[str, float]:
    """Seconds (median of `reps`) of one fixed small request per primitive: a reference workload that calibration
    records in the profile and validation repeats, to tell how fast the machine runs now against then."""
    from statistics import median

    from qroute.cost.model import PRIMITIVES

    k, n, steps = PROBE
    request = shaped_request(world, 1, k, n, steps, seed=424242)
    return {p: median(serve(executor, request, p).measured.total for _ in range(reps)) for p in PRIMITIVES}
