"""Attention states: partial attention over any subset of keys, and their exact merge.

An attention state `(o, lse)` is the softmax-normalised output `o` of some query rows over
a subset of keys, with `lse` the natural-log log-sum-exp of the (scaled) scores over that
subset, in float32. The empty subset is `(0, -inf)`. Because

    o_full = sum_i exp(lse_i - lse_full) * o_i,   lse_full = logsumexp_i(lse_i)

for any partition of the keys, states computed on different instances merge exactly,
in any order. This is what makes `route` correct.

Conventions (all functions):
    q     [..., R, D]   query rows, float32/bfloat16/float16
    k     [..., T, D]   keys (for absorbed MLA: 576 = 512 latent + 64 rope)
    v     [..., T, Dv]  values (for absorbed MLA: the 512-wide latent)
    o     [..., R, Dv]  same dtype as q
    lse   [..., R]      float32, natural log; -inf where a row saw no key
Arithmetic runs in float32 whatever the input dtype.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import torch
from torch import Tensor

from qroute.errors import QrouteError


class AttentionState(NamedTuple):
    """`o [..., R, Dv]` (dtype of the query) and `lse [..., R]` (float32, natural log)."""

    o: Tensor
    lse: Tensor


def check_finite(name: str, x: Tensor) -> None:
    """Reject NaN or +-Inf in `x` with an error naming the tensor."""
    if x.numel() and not bool(torch.isfinite(x).all()):
        bad = "NaN" if bool(torch.isnan(x).any()) else "Inf"
        raise QrouteError(f"{name} contains {bad}: expected finite values")


def empty_state(q: Tensor, v_dim: int) -> AttentionState:
    """The state of `q [..., R, D]` over no keys: `(0, -inf)`."""
    o = q.new_zeros(*q.shape[:-1], v_dim)
    lse = torch.full(q.shape[:-1], float("-inf"), dtype=torch.float32, device=q.device)
    return AttentionState(o, lse)


def attend(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    scale: float,
    mask: Tensor | None = None,
    check: bool = True,
) -> AttentionState:
    """Attention state of `q [..., R, D]` over `k [..., T, D]`, `v [..., T, Dv]`.

    `mask [..., R, T]` (bool, True = may attend) restricts keys per row; a row with no
    allowed key gets `(0, -inf)`. `check` rejects NaN/Inf inputs (costs a sync on GPU).
    """
    if check:
        for name, x in (("q", q), ("k", k), ("v", v)):
            check_finite(name, x)
        if q.shape[-1] != k.shape[-1]:
            raise QrouteError(f"q width {q.shape[-1]} != k width {k.shape[-1]}: expected equal")
        if k.shape[-2] != v.shape[-2]:
            raise QrouteError(f"k has {k.shape[-2]} keys but v has {v.shape[-2]}: expected equal")
    if k.shape[-2] == 0:
        return empty_state(q, v.shape[-1])
    scores = torch.matmul(q.float(), k.float().transpose(-1, -2)) * scale  # [..., R, T]
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)  # [..., R]
    seen = torch.isfinite(lse)
    probs = torch.exp(scores - torch.where(seen, lse, 0.0).unsqueeze(-1))
    o = torch.matmul(probs, v.float())
    return AttentionState(o.to(q.dtype), lse)


def merge_states(states: Sequence[AttentionState], check: bool = True) -> AttentionState:
    """Exact merge of partial states of the same rows over disjoint key subsets.

    Any number of partials, any order; empty partials `(0, -inf)` are neutral, and if every
    partial is empty the result is empty. Shapes: each `o [..., R, Dv]`, `lse [..., R]`.
    """
    if len(states) == 0:
        raise QrouteError("merge_states got no states: expected at least one")
    if check:
        _check_mergeable(states)
    if len(states) == 1:
        return states[0]
    lse = torch.stack([s.lse.float() for s in states])  # [P, ..., R]
    o = torch.stack([s.o.float() for s in states])  # [P, ..., R, Dv]
    total = torch.logsumexp(lse, dim=0)  # [..., R]
    seen = torch.isfinite(total)
    weights = torch.exp(lse - torch.where(seen, total, 0.0))  # exp(-inf) = 0 for empty partials
    merged = (weights.unsqueeze(-1) * o).sum(dim=0)
    return AttentionState(merged.to(states[0].o.dtype), total)


def _check_mergeable(states: Sequence[AttentionState]) -> None:
    first = states[0]
    for i, s in enumerate(states):
        if s.o.shape[:-1] != first.o.shape[:-1] or s.o.shape[-1] != first.o.shape[-1]:
            raise QrouteError(f"state {i} has o shape {tuple(s.o.shape)}: expected {tuple(first.o.shape)}")
        if s.lse.shape != s.o.shape[:-1]:
            raise QrouteError(f"state {i} has lse shape {tuple(s.lse.shape)}: expected {tuple(s.o.shape[:-1])}")
        check_finite(f"state {i} o", s.o)
        if bool(torch.isnan(s.lse).any()) or bool((s.lse == float("inf")).any()):
            raise QrouteError(f"state {i} lse contains NaN or +Inf: expected finite or -inf")


def gather_blocks(cache: Tensor, block_ids: Sequence[int] | Tensor) -> Tensor:
    """Rows of the selected blocks of a paged cache, in selection order.

    cache [num_blocks, block_size, D] -> [len(block_ids) * block_size, D]. Rejects ids out
    of range and duplicate ids (a duplicated block would be counted twice by softmax).
    """
    ids = torch.as_tensor(block_ids, dtype=torch.long, device=cache.device).flatten()
    if ids.numel() == 0:
        return cache.new_zeros(0, cache.shape[-1])
    lo, hi = int(ids.min()), int(ids.max())
    if lo < 0 or hi >= cache.shape[0]:
        bad = lo if lo < 0 else hi
        raise QrouteError(f"block id {bad} out of range: expected 0 <= id < {cache.shape[0]}")
    if torch.unique(ids).numel() != ids.numel():
        dup = _first_duplicate(ids.tolist())
        raise QrouteError(f"duplicate block id {dup} in selection: expected each block at most once")
    return cache.index_select(0, ids).reshape(-1, cache.shape[-1])


def _first_duplicate(ids: list[int]) -> int:
    seen: set[int] = set()
    for i in ids:
        if i in seen:
            return i
        seen.add(i)
    raise AssertionError("no duplicate")


def partial_attention(
    q: Tensor,
    cache: Tensor,
    block_ids: Sequence[int] | Tensor,
    scale: float,
    v_dim: int,
    check: bool = True,
) -> AttentionState:
    """State of `q [R, D]` over the selected blocks of a latent paged cache.

    cache [num_blocks, block_size, D] holds keys; the values are the first `v_dim`
    columns of each key row (absorbed MLA: the 512-wide latent of the 576-wide row).
    Empty selection gives `(0, -inf)`.
    """
    keys = gather_blocks(cache, block_ids)  # [T, D]
    return attend(q, keys, keys[..., :v_dim], scale, check=check)
