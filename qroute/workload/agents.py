"""Sub-agent decode requests over a shared corpus.

Each sub-agent has its own task context (a window of code it is working on), asks the
indexer which chunk of the corpus matters, selects blocks of it (all of them, or the top-k
when the selection is sparse), reuses that chunk right after its task context (so at a
logical offset equal to the task length, not at the chunk's canonical position 0), and
then decodes a few tokens. Task sources are drawn Zipf-skewed over the corpus, so popular
chunks are selected by many agents.

Sequence layout of a request, in logical positions:
    task [0, P) | chunk [P, P + C) (only the selected blocks are attended) | decode [P + C, ...)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from torch import Tensor

from qroute.errors import QrouteError, positive_int
from qroute.indexer import BlockIndexer
from qroute.workload.corpus import Corpus


@dataclass(frozen=True)
class AgentRequest:
    """One sub-agent's decode request and its selection."""

    id: int
    task: Tensor  # [P] long: the agent's own context
    first_token: int  # input of the first decode step
    chunk: int
    blocks: tuple[int, ...]  # selected blocks of `chunk`, in order
    chunk_tokens: int  # C: the chunk's length (its logical span)
    steps: int
    sparse: bool
    step_tokens: int = 1  # tokens decoded per step: the greedy token, then step_tokens - 1 drafts

    def step_inputs(self, step: int, greedy: int) -> list[int]:
        """Inputs of decode step `step`: the greedy token, then draft tokens (taken from the task text,
        as a speculative drafter would propose them; outputs are compared teacher-forced, so any draft works)."""
        n = self.task.numel()
        drafts = [int(self.task[(step * self.step_tokens + j) % n]) for j in range(1, self.step_tokens)]
        return [greedy, *drafts]

    @property
    def offset(self) -> int:
        """Logical position of the chunk's first token."""
        return self.task.numel()

    @property
    def first_position(self) -> int:
        """Position of the first decode token."""
        return self.offset + self.chunk_tokens


@dataclass(frozen=True)
class WorkloadSpec:
    """`steps`: decode steps per request, drawn uniformly from these values per request."""

    requests: int = 8
    task_tokens: int = 24
    steps: tuple[int, ...] = (4,)
    topk_blocks: int = 4
    sparse: bool = False
    zipf: float = 1.1
    seed: int = 0
    step_tokens: int = 1

    def __post_init__(self) -> None:
        for name in ("requests", "task_tokens", "topk_blocks", "step_tokens"):
            positive_int(name.replace("_", " "), getattr(self, name))
        if isinstance(self.steps, int):
            object.__setattr__(self, "steps", (self.steps,))
        if not self.steps:
            raise QrouteError("steps: expected at least one value")
        for s in self.steps:
            positive_int("steps", s)
        if not self.zipf > 0:
            raise QrouteError(f"zipf={self.zipf!r}: expected > 0")


def make_requests(corpus: Corpus, indexer: BlockIndexer, spec: WorkloadSpec) -> list[AgentRequest]:
    """`spec.requests` sub-agent requests, deterministic in `spec.seed`."""
    rng = np.random.default_rng(spec.seed)
    weights = 1.0 / np.arange(1, len(corpus.chunks) + 1) ** spec.zipf
    order = rng.permutation(len(corpus.chunks))  # which chunks are popular
    out = []
    for i in range(spec.requests):
        source = corpus.chunks[int(order[rng.choice(len(order), p=weights / weights.sum())])]
        task, first = _task_window(source.tokens, spec.task_tokens, rng)
        chunk = indexer.top_chunk(task, spec.topk_blocks)
        n = corpus.chunks[chunk].n_blocks(corpus.block_size)
        blocks = indexer.select_in_chunk(task, chunk, spec.topk_blocks) if spec.sparse else list(corpus.chunks[chunk].blocks(corpus.block_size))
        steps = int(spec.steps[rng.integers(len(spec.steps))])
        out.append(AgentRequest(i, task, first, chunk, tuple(blocks), n * corpus.block_size, steps, spec.sparse,
                                spec.step_tokens))  # fmt: skip
    return out


def batches(requests: list[AgentRequest], size: int) -> list[list[AgentRequest]]:
    """Requests decoded together: same number of decode steps, at most `size` per batch."""
    out: list[list[AgentRequest]] = []
    for steps in sorted({r.steps for r in requests}):
        same = [r for r in requests if r.steps == steps]
        out += [same[i : i + size] for i in range(0, len(same), size)]
    return out


def _task_window(tokens: Tensor, length: int, rng: np.random.Generator) -> tuple[Tensor, int]:
    """A window of `length` tokens and the token after it (wrapping short sources)."""
    reps = (length + 1) // tokens.numel() + 1
    text = tokens.repeat(reps) if reps > 1 else tokens
    start = int(rng.integers(0, text.numel() - length))
    return text[start : start + length].clone(), int(text[start + length])
