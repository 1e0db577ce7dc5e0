"""Requests of a chosen shape, served for real: what in-situ calibration and validation run."""

from __future__ import annotations

import torch

from qroute.errors import QrouteError
from qroute.runtime.executor import Executor, Session
from qroute.workload.agents import AgentRequest


def shaped_request(world, holders: int, step_tokens: int, blocks: int, steps: int, seed: int) -> AgentRequest:
    """A request over the first `blocks` blocks of a chunk spread over exactly `holders` holders
    (rows per layer = step_tokens x heads)."""
    bs = world.corpus.block_size
    for chunk in world.corpus.chunks:
        ids = list(chunk.blocks(bs))[:blocks]
        if len(ids) == blocks and len(world.directory.by_holder(ids)) == holders:
            g = torch.Generator().manual_seed(seed)
            task = torch.randint(0, world.model.config.vocab_size, (16,), generator=g)
            return AgentRequest(seed, task, int(task[0]), chunk.id, tuple(ids), chunk.tokens.numel(), steps, False, step_tokens)
    raise QrouteError(f"no chunk with {blocks} blocks on {holders} holders: expected a larger corpus")


def serve(executor: Executor, request: AgentRequest, primitive: str) -> Session:
    """Open the request with `primitive` forced (or the predicate's choice) and decode all its steps."""
    session = executor.open(request, primitive)
    for _ in range(request.steps):
        executor.step([session])
    return session
