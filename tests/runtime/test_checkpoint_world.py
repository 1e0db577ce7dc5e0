"""The runtime on a HuggingFace checkpoint directory with its own tokenizer.json."""

import pytest

from qroute.demo import run_demo
from qroute.runtime.world import WorldSpec

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt")
    tok = tokenizers.ByteLevelBPETokenizer()
    tok.train_from_iterator([open(__file__).read()] * 4, vocab_size=300, min_frequency=1, show_progress=False)
    tok.save(str(path / "tokenizer.json"))
    config = transformers.DeepseekV3Config(
        vocab_size=tok.get_vocab_size(), hidden_size=64, intermediate_size=96, moe_intermediate_size=32,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4, q_lora_rank=32, kv_lora_rank=64,
        qk_rope_head_dim=16, qk_nope_head_dim=16, v_head_dim=16, n_routed_experts=4, num_experts_per_tok=2,
        n_group=1, topk_group=1, first_k_dense_replace=1, num_nextn_predict_layers=0,
    )  # fmt: skip
    transformers.DeepseekV3ForCausalLM(config).save_pretrained(path)
    return path


def test_demo_on_a_checkpoint_with_its_tokenizer(tiny, checkpoint):
    base = tiny(instances=2, modes=("route", "fetch", "local"))
    config = type(base)(**{**base.__dict__, "world": WorldSpec(str(checkpoint), corpus=base.world.corpus)})
    results = run_demo(config)
    assert results["model"]["latent_width"] == 64 + 16
    assert results["model"]["layers"] == 2
    for run in results["runs"]:
        assert run["exact"], run["max_rel_err"]
