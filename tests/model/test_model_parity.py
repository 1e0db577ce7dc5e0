"""Parity with transformers' DeepseekV2/V3 (eager, float32): prefill logits and greedy decode with its KV cache."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers")

from tests.model.mla_hf import PLAIN, build, hf_logits, save, v2_config, v3_config  # noqa: E402

from qroute.model import load_pretrained  # noqa: E402

ATOL = RTOL = 1e-4
DECODE_STEPS = 5

CASES = {
    "v3-yarn": lambda: v3_config(),
    "v3-plain-nointerleave-bias-tied": lambda: v3_config(
        rope_parameters=PLAIN, rope_interleave=False, attention_bias=True, tie_word_embeddings=True,
        n_group=1, topk_group=1, num_experts_per_tok=3,
    ),
    "v2-yarn-greedy": lambda: v2_config(),
    "v2-plain-group-limited": lambda: v2_config(
        rope_parameters=PLAIN, topk_method="group_limited_greedy", n_group=4, topk_group=2, first_k_dense_replace=0,
    ),
}  # fmt: skip


@pytest.fixture(scope="module", params=sorted(CASES), ids=sorted(CASES))
def pair(request, tmp_path_factory):
    """(HF model, the same checkpoint loaded by qroute)."""
    seed = sorted(CASES).index(request.param) + 11
    hf = build(CASES[request.param](), seed)
    path = save(hf, tmp_path_factory.mktemp(request.param))
    return hf, load_pretrained(path)


def test_prefill_then_greedy_decode_match_transformers(pair):
    hf, ours = pair
    generator = torch.Generator().manual_seed(5)
    prompt = torch.randint(0, hf.config.vocab_size, (11,), generator=generator)
    ref, cache = hf_logits(hf, prompt)
    out = ours.prefill(prompt)
    torch.testing.assert_close(out.logits, ref, atol=ATOL, rtol=RTOL)
    kv, token = out.kv, int(ref[-1].argmax())
    for step in range(DECODE_STEPS):
        ref, cache = hf_logits(hf, torch.tensor([token]), cache)
        out = ours.decode(torch.tensor([token]), torch.tensor([prompt.numel() + step]), kv)
        torch.testing.assert_close(out.logits, ref, atol=ATOL, rtol=RTOL, msg=lambda m: f"decode step {step}: {m}")
        kv, token = torch.cat((kv, out.kv), dim=1), int(ref[-1].argmax())
    assert kv.shape == (hf.config.num_hidden_layers, prompt.numel() + DECODE_STEPS, ours.config.latent_width)


def test_multi_token_decode_matches_transformers(pair):
    """A chunk of several new tokens after a cached prefix (causal among themselves)."""
    hf, ours = pair
    generator = torch.Generator().manual_seed(6)
    tokens = torch.randint(0, hf.config.vocab_size, (12,), generator=generator)
    _, cache = hf_logits(hf, tokens[:7])
    ref, _ = hf_logits(hf, tokens[7:], cache)
    prefix = ours.prefill(tokens[:7]).kv
    out = ours.decode(tokens[7:], torch.arange(7, 12), prefix)
    torch.testing.assert_close(out.logits, ref, atol=ATOL, rtol=RTOL)


def test_router_correction_bias_matters(tmp_path):
    """The V3 parity case would not notice a dropped e_score_correction_bias unless it changes routing."""
    hf = build(v3_config(), 11)
    ours = load_pretrained(save(hf, tmp_path))
    tokens = torch.randint(0, 97, (16,), generator=torch.Generator().manual_seed(7))
    before = ours.prefill(tokens).logits
    for layer in ours.model.layers[ours.config.first_k_dense_replace :]:
        layer.mlp.gate.e_score_correction_bias.zero_()
    assert (ours.prefill(tokens).logits - before).abs().max() > 1e-2
