"""Decode against a cached prefix equals prefill of the whole sequence; contexts merge exactly."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from qroute.attention.states import AttentionState, attend, merge_states
from qroute.errors import QrouteError
from qroute.model import Context, LocalContext, causal_mask
from tests.model.mla_tiny import random_tokens, tiny_model

MODEL = tiny_model(seed=3)


def test_decode_steps_equal_prefill_of_the_whole_sequence():
    tokens = random_tokens(14, seed=1)
    full = MODEL.prefill(tokens)
    kv = MODEL.prefill(tokens[:8]).kv
    for pos in range(8, 14):
        out = MODEL.decode(tokens[pos : pos + 1], torch.tensor([pos]), kv)
        torch.testing.assert_close(out.logits[0], full.logits[pos], atol=2e-5, rtol=1e-5)
        torch.testing.assert_close(out.kv[:, 0], full.kv[:, pos], atol=2e-5, rtol=1e-5)
        kv = torch.cat((kv, out.kv), dim=1)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(2, 16), data=st.data())
def test_chunked_decode_equals_prefill(seed, n, data):
    """Any split of a sequence into a prefill and decode chunks gives the prefill's logits."""
    tokens = random_tokens(n, seed)
    full = MODEL.prefill(tokens)
    cut = data.draw(st.integers(1, n - 1), label="prefix")
    kv = MODEL.prefill(tokens[:cut]).kv
    while cut < n:
        step = data.draw(st.integers(1, n - cut), label="chunk")
        out = MODEL.decode(tokens[cut : cut + step], torch.arange(cut, cut + step), kv)
        torch.testing.assert_close(out.logits, full.logits[cut : cut + step], atol=3e-5, rtol=1e-5)
        kv, cut = torch.cat((kv, out.kv), dim=1), cut + step


class SplitContext:
    """Route-like context: the prefix split over two 'holders', partial states merged."""

    def __init__(self, prefix: torch.Tensor, cut: int, v_dim: int) -> None:
        self.parts, self.v_dim = (prefix[:, :cut], prefix[:, cut:]), v_dim

    def attend(self, layer, q, kv_new, positions, scale) -> AttentionState:
        tokens, heads, width = q.shape
        rows = q.reshape(tokens * heads, width)
        states = [attend(rows, p[layer], p[layer][:, : self.v_dim], scale) for p in self.parts]
        mask = causal_mask(0, tokens).repeat_interleave(heads, dim=0)
        states.append(attend(rows, kv_new, kv_new[:, : self.v_dim], scale, mask=mask))
        merged = merge_states(states[::-1])  # any order
        return AttentionState(merged.o.view(tokens, heads, -1), merged.lse.view(tokens, heads))


@pytest.mark.parametrize("cut", [0, 3, 9])
def test_partitioned_context_merges_to_local_context(cut):
    tokens = random_tokens(12, seed=2)
    prefix = MODEL.prefill(tokens[:9]).kv
    context = SplitContext(prefix, cut, MODEL.config.kv_lora_rank)
    assert isinstance(context, Context)
    split = MODEL.forward(tokens[9:], torch.arange(9, 12), context)
    local = MODEL.decode(tokens[9:], torch.arange(9, 12), prefix)
    torch.testing.assert_close(split.logits, local.logits, atol=2e-5, rtol=1e-5)


def test_bfloat16_model_runs_and_tracks_float32():
    tokens = random_tokens(10, seed=4)
    fp32 = tiny_model(seed=5)
    bf16 = tiny_model(seed=5, dtype=torch.bfloat16)
    assert bf16.model.layers[1].mlp.gate.e_score_correction_bias.dtype == torch.float32
    full = bf16.prefill(tokens)
    assert full.kv.dtype == torch.bfloat16 and full.logits.dtype == torch.float32
    step = bf16.decode(tokens[6:], torch.arange(6, 10), bf16.prefill(tokens[:6]).kv)
    torch.testing.assert_close(step.logits, full.logits[6:], atol=5e-2, rtol=5e-2)
    reference = fp32.prefill(tokens).logits
    assert (full.logits - reference).abs().max() < 0.1 * reference.abs().max()


def test_random_weights_are_deterministic_and_seeded():
    tokens = random_tokens(5, seed=6)
    a, b, c = tiny_model(seed=7), tiny_model(seed=7), tiny_model(seed=8)
    assert torch.equal(a.prefill(tokens).logits, b.prefill(tokens).logits)
    assert not torch.equal(a.prefill(tokens).logits, c.prefill(tokens).logits)


@pytest.mark.parametrize(
    "tokens, positions, match",
    [
        (torch.tensor([1, 200]), torch.tensor([0, 1]), "token id 200"),
        (torch.tensor([1, -1]), torch.tensor([0, 1]), "token id -1"),
        (torch.tensor([1, 2]), torch.tensor([0]), "positions shape"),
        (torch.tensor([[1, 2]]), torch.tensor([[0, 1]]), "tokens shape"),
        (torch.tensor([1, 2]), torch.tensor([0, -3]), "position -3"),
    ],
)
def test_bad_inputs_raise(tokens, positions, match):
    with pytest.raises(QrouteError, match=match):
        MODEL.forward(tokens, positions, LocalContext(None, MODEL.config.kv_lora_rank))


def test_bad_prefix_raises():
    with pytest.raises(QrouteError, match="prefix kv shape"):
        MODEL.decode(torch.tensor([1]), torch.tensor([4]), torch.randn(2, 4, MODEL.config.latent_width))
    with pytest.raises(QrouteError, match="prefix kv contains NaN"):
        LocalContext(torch.full((3, 2, 48), float("nan")), 32)


def test_local_context_chunks_long_queries(monkeypatch):
    """Splitting the query tokens to bound score memory changes nothing."""
    import qroute.model.context as context_module

    tokens = random_tokens(9, seed=9)
    whole = MODEL.prefill(tokens)
    monkeypatch.setattr(context_module, "SCORE_BUDGET", 1)
    torch.testing.assert_close(MODEL.prefill(tokens).logits, whole.logits, atol=1e-6, rtol=1e-6)
