"""The plain-torch paths on a CUDA device equal the CPU oracle (skipped without a GPU)."""

import pytest
import torch

from qroute.attention import RopeSpec, YarnScaling, merge_states, partial_attention, rotate, splice
from qroute.model import MLATransformer, ModelConfig
from qroute.geometry import preset

pytestmark = pytest.mark.gpu
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


def rel(a, b):
    return float((a.double().cpu() - b.double().cpu()).abs().max() / b.double().abs().max())


@cuda
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.bfloat16, 1e-2)])
def test_partial_attention_over_blocks_and_merge_on_gpu(dtype, tol):
    g = torch.Generator().manual_seed(1)
    cache = torch.randn(64, 16, 576, generator=g).to(dtype)
    q = (torch.randn(128, 576, generator=g) * 0.05).to(dtype)
    parts = [[3, 9, 12], [0, 40], [63]]
    gpu = merge_states([partial_attention(q.cuda(), cache.cuda(), p, 0.07, 512) for p in parts])
    cpu = partial_attention(q.float(), cache.float(), sum(parts, []), 0.07, 512)
    assert gpu.o.device.type == "cuda"
    assert rel(gpu.o, cpu.o) <= tol
    assert float((gpu.lse.cpu() - cpu.lse).abs().max()) <= 1e-3


@cuda
def test_splice_on_gpu():
    spec = RopeSpec(64, yarn=YarnScaling(40.0, 4096, mscale=1.0, mscale_all_dim=1.0))
    k = torch.randn(27, 300, 64)
    assert rel(splice(k.cuda(), 4096, spec), rotate(k, 4096, spec)) <= 1e-5


@cuda
def test_model_on_gpu_matches_cpu():
    config = ModelConfig.from_geometry(preset("deepseek-v2-lite"), layers=2, hidden_size=128)
    cpu = MLATransformer.random(config, seed=3)
    gpu = MLATransformer.random(config, seed=3, device="cuda")
    tokens = torch.randint(0, 256, (33,), generator=torch.Generator().manual_seed(0))
    a, b = cpu.prefill(tokens), gpu.prefill(tokens.cuda())
    assert rel(b.logits, a.logits) <= 1e-4 and rel(b.kv, a.kv) <= 1e-4


@cuda
def test_framed_messages_into_gpu_buffers_keep_every_byte():
    """Exact framing's first frames on a GPU, many in a row behind a busy stream: the header and host tensors copied
    from the host, GPU tensors on the device, each where `unpack` reads it."""
    from qroute.runtime import transport

    dev, frames, want = torch.device("cuda"), [], []
    slow = torch.randn(2048, 2048, device=dev)
    for i in range(64):
        _ = slow @ slow  # keep the stream busy so the staged copies queue behind it
        ts = [torch.randn(3, 5, device=dev), torch.arange(i, i + 7), torch.empty(0), torch.randint(0, 9, (4,)).int()]
        header, nbytes = transport.encode_header(i, [i, 2 * i], ts)
        frames.append(transport.pack(ts, nbytes, header, dev, transport.FIRST))
        want.append((i, [i, 2 * i], [t.cpu() for t in ts]))
    for buf, (kind, meta, ts) in zip(frames, want):
        k, m, specs, _ = transport.decode_header(buf[: transport.HEADER_BYTES].view(torch.int64))
        got = transport.unpack(buf[transport.HEADER_BYTES :], specs)
        assert (k, m) == (kind, meta) and all(torch.equal(g.cpu(), t) for g, t in zip(got, ts))
