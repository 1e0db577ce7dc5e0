"""RoPE shift at model level: re-prefill at p + d == splice(canonical KV, d) == routing with shifted queries."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from qroute.attention.rope import shift_query, splice
from qroute.attention.states import AttentionState, attend, merge_states
from qroute.model import causal_mask
from tests.model.mla_tiny import random_tokens, tiny_model

MODELS = {"yarn": tiny_model(seed=11, yarn=True), "plain": tiny_model(seed=12, yarn=False)}


def spliced(model, kv: torch.Tensor, offset: int) -> torch.Tensor:
    """Fetch: rotate every layer's key rope part by +offset; the latent part never changes."""
    rank = model.config.kv_lora_rank
    return torch.cat((kv[..., :rank], splice(kv[..., rank:], offset, model.config.rope)), dim=-1)


@pytest.mark.parametrize("kind", sorted(MODELS))
@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(1, 12), start=st.integers(0, 64), offset=st.integers(-64, 60_000))
def test_reprefill_at_shifted_positions_equals_splice(kind, seed, n, start, offset):
    model = MODELS[kind]
    offset = max(offset, -start)  # positions stay >= 0
    chunk, positions = random_tokens(n, seed), torch.arange(start, start + n)
    canonical = model.reprefill(chunk, positions)
    shifted = model.reprefill(chunk, positions + offset)
    rank = model.config.kv_lora_rank
    assert canonical.shape == (model.config.num_layers, n, model.config.latent_width)
    torch.testing.assert_close(shifted[..., :rank], canonical[..., :rank], atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(shifted, spliced(model, canonical, offset), atol=2e-5, rtol=1e-5)


class RouteContext:
    """Route: a holder keeps a chunk at canonical positions; the requester's query rope parts are rotated by -offset."""

    def __init__(self, model, local: torch.Tensor, chunk: torch.Tensor, offset: int) -> None:
        self.local, self.chunk, self.offset = local, chunk, offset
        self.rank, self.rope = model.config.kv_lora_rank, model.config.rope

    def attend(self, layer, q, kv_new, positions, scale) -> AttentionState:
        tokens, heads, width = q.shape
        rows = q.reshape(tokens * heads, width)
        routed = torch.cat((rows[:, : self.rank], shift_query(rows[:, self.rank :], self.offset, self.rope)), dim=-1)
        chunk, local = self.chunk[layer], self.local[layer]
        mask = causal_mask(0, tokens).repeat_interleave(heads, dim=0)
        states = [
            attend(routed, chunk, chunk[:, : self.rank], scale),  # on the holder
            attend(rows, local, local[:, : self.rank], scale),
            attend(rows, kv_new, kv_new[:, : self.rank], scale, mask=mask),
        ]
        merged = merge_states(states)
        return AttentionState(merged.o.view(tokens, heads, -1), merged.lse.view(tokens, heads))


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_local_fetch_and_route_decode_the_same(kind):
    """A requester with its own 5 tokens reuses a 7-token chunk prefilled elsewhere at positions 0..6."""
    model = MODELS[kind]
    own, chunk, new = random_tokens(5, 21), random_tokens(7, 22), random_tokens(2, 23)
    offset, own_kv = 5, model.prefill(own).kv
    canonical = model.reprefill(chunk, torch.arange(7))
    new_positions = torch.arange(12, 14)
    local = model.decode(new, new_positions, torch.cat((own_kv, model.reprefill(chunk, torch.arange(7) + offset)), 1))
    fetch = model.decode(new, new_positions, torch.cat((own_kv, spliced(model, canonical, offset)), 1))
    route = model.forward(new, new_positions, RouteContext(model, own_kv, canonical, offset))
    torch.testing.assert_close(fetch.logits, local.logits, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(route.logits, local.logits, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(route.kv, local.kv, atol=2e-5, rtol=1e-5)
