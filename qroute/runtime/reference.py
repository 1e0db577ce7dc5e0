"""The single-instance oracle: what a request's logits are when one process holds everything."""

from __future__ import annotations

import torch
from torch import Tensor

from qroute.model import MLATransformer
from qroute.workload.agents import AgentRequest
from qroute.workload.corpus import Corpus


def reference_logits(model: MLATransformer, corpus: Corpus, r: AgentRequest, inputs: list[list[int]]) -> Tensor:
    """Logits `[steps * step_tokens, V]` of request `r` decoding `inputs` (per step; teacher-forced), plain local attention.

    The selected chunk is prefilled at its reuse positions (offset + canonical), up to its
    last selected block; the decode tokens attend the task, the selected blocks and
    themselves.
    """
    bs = corpus.block_size
    chunk = corpus.chunks[r.chunk]
    idx = torch.tensor([b - chunk.first_block for b in r.blocks])
    length = (int(idx.max()) + 1) * bs
    chunk_kv = model.reprefill(chunk.tokens[:length], r.offset + torch.arange(length))
    rows = (idx[:, None] * bs + torch.arange(bs)).reshape(-1)
    prefix = torch.cat((model.prefill(r.task).kv, chunk_kv.index_select(1, rows.to(chunk_kv.device))), dim=1)
    out, position = [], r.first_position
    for tokens in inputs:
        step = model.decode(torch.tensor(tokens), torch.arange(position, position + len(tokens)), prefix)
        out.append(step.logits)
        prefix = torch.cat((prefix, step.kv), dim=1)
        position += len(tokens)
    return torch.cat(out)


def relative_error(got: Tensor, want: Tensor) -> float:
    """max |got - want| / max |want|."""
    return float((got - want).abs().max() / want.abs().max().clamp_min(1e-30))
