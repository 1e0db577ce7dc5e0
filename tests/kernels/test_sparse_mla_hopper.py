"""The Hopper (Gluon) sparse MLA kernel: when it runs, that it compiles to the intended wgmma shapes for sm_90
(on any machine with Triton's bundled ptxas), and on an H100/H200 that it equals the torch reference."""

import json
import os
import subprocess
import sys

import pytest
import torch

pytest.importorskip("triton", exc_type=ImportError)

from qroute.errors import QrouteError  # noqa: E402
from qroute.kernels import sparse_mla, sparse_mla_reference  # noqa: E402
from qroute.kernels import sparse_mla_hopper as hopper  # noqa: E402
from qroute.kernels.sparse_mla import TILES, _usable_tiles, default_config, resolve_kernel  # noqa: E402
from tests.kernels.helpers import TOL, gpu, lse_err, poisoned, rel_err  # noqa: E402
from tests.kernels.test_sparse_mla import oracle64, random_case  # noqa: E402

needs_gluon = pytest.mark.skipif(not hopper.available(), reason="this triton has no Gluon")
on_hopper = torch.cuda.is_available() and torch.cuda.get_device_capability()[0] == 9
needs_hopper = pytest.mark.skipif(not on_hopper or not hopper.available(), reason="needs an sm_90 GPU and Gluon")


def test_reasons_it_does_not_apply_are_named():
    q, cache = torch.zeros(2, 4, 576, dtype=torch.bfloat16), torch.zeros(8, 64, 576, dtype=torch.bfloat16)
    why = hopper.reason_not(q, cache, 512, TILES)
    assert why is not None and ("Gluon" in why or "sm_90" in why or "interpreter" in why)


def test_triton_knobs_or_a_cpu_device_select_the_triton_kernel():
    q, cache = torch.zeros(2, 4, 576, dtype=torch.bfloat16), torch.zeros(8, 64, 576, dtype=torch.bfloat16)
    meta = {**default_config(torch.bfloat16, 4), "kernel": "gluon"}
    assert resolve_kernel(dict(meta), q, cache, 512, {"BLOCK_N": 32}) == "triton"
    assert resolve_kernel(dict(meta), q, cache, 512, {}) == "triton"  # CPU: does not apply, falls back
    with pytest.raises(QrouteError, match="kernel='gluon' does not apply: "):
        resolve_kernel(dict(meta), q, cache, 512, {"kernel": "gluon"})
    with pytest.raises(QrouteError, match="kernel='cuda': expected one of triton, gluon"):
        sparse_mla(q, cache, torch.zeros(2, 1, dtype=torch.long), 0.1, config={"kernel": "cuda"})


@needs_gluon
def test_compiles_for_sm90_to_split_score_and_value_wgmmas():
    """Built for sm_90a without a GPU (Triton's ptxas), in a fresh process without TRITON_INTERPRET: per 64-token tile
    the score warpgroup issues 32 + 4 MMAs of 64 x 64 (the scores once, not per warpgroup) and each warpgroup 4 value
    MMAs of 64 x 256 (its half of the 512 value columns), with no local memory, in the shared memory sm_90 has."""
    code = (
        "import json; from qroute.kernels.sparse_mla_hopper import compile_sm90; c = compile_sm90(); p = c.asm['ptx']; "
        "print(json.dumps({'n64': p.count('wgmma.mma_async.sync.aligned.m64n64k16'), "
        "'n256': p.count('wgmma.mma_async.sync.aligned.m64n256k16'), 'local': p.count('.local'), "
        "'cubin': len(c.asm['cubin']), 'shared': c.metadata.shared}))"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    got = json.loads(run.stdout.strip().splitlines()[-1])
    assert (got["n64"], got["n256"], got["local"]) == (36, 8, 0) and got["cubin"] > 0
    assert got["shared"] <= 232448  # sm_90's opt-in shared memory per block


@gpu
@needs_hopper
@pytest.mark.parametrize(
    "seed, B, H, N, bs, M, pad, splits, dtype",
    [
        (0, 64, 128, 4096, 64, 32, 0.0, None, torch.bfloat16),  # the shape, one split per query
        (1, 3, 128, 64, 64, 8, 0.3, None, torch.bfloat16),  # split-K with padding anywhere
        (2, 8, 16, 100, 64, 5, 0.2, None, torch.bfloat16),  # H < 64: a head group past the query's heads
        (3, 4, 96, 50, 128, 6, 0.25, 2, torch.float16),  # H not a multiple of 64, block size 128, fp16
        (4, 9, 128, 30, 64, 7, 0.5, 3, torch.bfloat16),  # splits of unequal length
        (6, 64, 128, 4096, 64, 32, 0.05, None, torch.bfloat16),  # int64 table, padding, one split of 32 tiles
        (5, 5, 128, 40, 64, 4, 1.0, None, torch.bfloat16),  # every entry padding
    ],
)
def test_hopper_kernel_equals_reference(seed, B, H, N, bs, M, pad, splits, dtype):
    q, cache, table = random_case(seed, B, H, N, bs, M, dtype=dtype, pad=pad, device="cuda")
    if B > 2:
        table[1] = -1  # one empty row
    assert hopper.reason_not(q, cache, 512, _usable_tiles(cache, 512, 64)) is None
    out = (poisoned((B, H, 512), dtype, "cuda"), poisoned((B, H), torch.float32, "cuda"))
    ids = table if seed == 6 else table.int()  # block ids as int64 or int32
    got = sparse_mla(q, cache, ids, 576**-0.5, num_splits=splits, config={"kernel": "gluon"}, out=out)
    ref = sparse_mla_reference(q, cache, table, 576**-0.5)
    o64, lse64 = oracle64(q, cache, table, 576**-0.5, 512)
    assert rel_err(got.o, ref.o) <= TOL[torch.bfloat16] and rel_err(got.o, o64) <= TOL[torch.bfloat16]
    assert lse_err(got.lse, ref.lse) <= 1e-5 and lse_err(got.lse, lse64) <= 1e-5
    if B > 2:
        assert bool((got.o[1] == 0).all()) and bool((got.lse[1] == float("-inf")).all())


@gpu
@needs_hopper
def test_default_dispatch_takes_the_hopper_kernel_from_b8_and_triton_at_b1():
    for B, want in ((1, "triton"), (8, "gluon"), (64, "gluon")):
        q, cache, table = random_case(B, B, 128, 512, 64, 32, dtype=torch.bfloat16, pad=0.0, device="cuda")
        meta = default_config(q.dtype, 128, B * 32, q.device)
        assert resolve_kernel(meta, q, cache, 512, {}) == want
        got = sparse_mla(q, cache, table, 576**-0.5)
        ref = sparse_mla_reference(q, cache, table, 576**-0.5)
        assert rel_err(got.o, ref.o) <= 1e-2 and lse_err(got.lse, ref.lse) <= 1e-5
