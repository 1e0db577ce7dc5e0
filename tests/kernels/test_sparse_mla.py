"""sparse_mla (Triton, split-K) equals the torch reference, which equals per-row partial_attention and float64."""

import pytest
import torch

pytest.importorskip("triton", exc_type=ImportError)  # missing or broken install: skip

from qroute.attention import partial_attention  # noqa: E402
from qroute.errors import QrouteError  # noqa: E402
from qroute.kernels import merge_partials, sparse_mla, sparse_mla_reference  # noqa: E402
from qroute.kernels.sparse_mla import TILES, resolve_tiles  # noqa: E402
from tests.kernels.helpers import DEVICE, TOL, gen, gpu, lse_err, needs_compiled_cuda, poisoned, rel_err  # noqa: E402

CFG = {"BLOCK_N": 16, "num_warps": 4, "num_stages": 2}  # an override of the default config


def random_case(seed, B, H, num_blocks, bs, M, D=576, dtype=torch.float32, pad=0.3, device=DEVICE):
    """q [B, H, D] (peaky scores), cache [N, bs, D], table [B, M] of distinct ids with -1 anywhere."""
    g = gen(seed)
    q = (torch.randn(B, H, D, generator=g) * 0.3).to(dtype).to(device)
    cache = torch.randn(num_blocks, bs, D, generator=g).to(dtype).to(device)
    table = torch.stack([torch.randperm(num_blocks, generator=g)[:M] for _ in range(B)]) if M else torch.zeros(B, 0)
    table = table.long()
    table[torch.rand(B, M, generator=g) < pad] = -1
    return q, cache, table.to(device)


def oracle64(q, cache, table, scale, v_dim):
    """Per query: plain float64 softmax over its selected rows (the single-instance oracle)."""
    outs, lses = [], []
    for b in range(q.shape[0]):
        ids = table[b][table[b] >= 0].cpu()
        k = cache.cpu().double()[ids].reshape(-1, cache.shape[-1])
        s = (q[b].cpu().double() @ k.T) * scale  # [H, T]
        if k.shape[0] == 0:
            outs.append(torch.zeros(q.shape[1], v_dim, dtype=torch.float64))
            lses.append(torch.full((q.shape[1],), float("-inf"), dtype=torch.float64))
            continue
        outs.append(torch.softmax(s, -1) @ k[:, :v_dim])
        lses.append(torch.logsumexp(s, -1))
    return torch.stack(outs), torch.stack(lses)


def assert_close(got, q, cache, table, scale, v_dim, dtype):
    ref = sparse_mla_reference(q, cache, table, scale, v_dim)
    o64, lse64 = oracle64(q, cache, table, scale, v_dim)
    assert got.o.dtype == q.dtype and got.lse.dtype == torch.float32
    assert got.o.shape == (q.shape[0], q.shape[1], v_dim) and got.lse.shape == q.shape[:2]
    assert rel_err(got.o, ref.o) <= TOL[dtype] and rel_err(got.o, o64) <= TOL[dtype]
    assert lse_err(got.lse, ref.lse) <= 1e-5 and lse_err(got.lse, lse64) <= 1e-5


CASES = [  # B, H, num_blocks, block_size, max_blocks
    (1, 5, 12, 16, 3),  # B=1, H not a power of two
    (3, 17, 9, 64, 4),  # block_size 64, H > one head group
    (2, 16, 40, 16, 11),
]


@pytest.mark.parametrize("B, H, N, bs, M", CASES)
@pytest.mark.parametrize("num_splits", [1, 3, None])
def test_fp32_matches_reference_and_float64(B, H, N, bs, M, num_splits):
    q, cache, table = random_case(B * 7 + M, B, H, N, bs, M)
    config = None if num_splits is None else CFG  # None: the dtype's default config
    got = sparse_mla(q, cache, table, 0.09, num_splits=num_splits, backend="triton", config=config)
    assert_close(got, q, cache, table, 0.09, 512, torch.float32)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_inputs(dtype):
    q, cache, table = random_case(5, 2, 6, 10, 16, 5, dtype=dtype)
    got = sparse_mla(q, cache, table, 0.06, num_splits=2, backend="triton", config=CFG)
    assert_close(got, q, cache, table, 0.06, 512, dtype)


def test_reference_equals_partial_attention_per_row():
    q, cache, table = random_case(9, 3, 4, 10, 16, 4)
    ref = sparse_mla_reference(q, cache, table, 0.1)
    for b in range(3):
        row = partial_attention(q[b], cache, table[b][table[b] >= 0], 0.1, 512)
        assert rel_err(ref.o[b], row.o) <= 1e-6 and lse_err(ref.lse[b], row.lse) <= 1e-6


def test_corner_rows_empty_one_block_one_token_padding_in_middle():
    q, cache, _ = random_case(2, 4, 3, 8, 16, 0)
    table = torch.tensor([[-1, -1, -1], [5, -1, -1], [-1, 2, -1], [6, -1, 0]], device=DEVICE)  # empty, one, middle
    out = (poisoned((4, 3, 512), torch.float32), poisoned((4, 3), torch.float32))
    got = sparse_mla(q, cache, table, 0.08, num_splits=2, out=out, backend="triton", config=CFG)
    assert got.o is out[0] and not bool(got.o.isnan().any()) and not bool(got.lse.isnan().any())
    assert bool((got.o[0] == 0).all()) and bool((got.lse[0] == float("-inf")).all())
    assert_close(got, q, cache, table, 0.08, 512, torch.float32)
    one_token = random_case(4, 1, 3, 5, 1, 1, pad=0.0)  # block_size 1, one block: a single key
    got = sparse_mla(*one_token, 0.1, backend="triton", config=CFG)
    assert_close(got, *one_token, 0.1, 512, torch.float32)
    assert rel_err(got.o[0, 0], one_token[1][one_token[2][0, 0], 0, :512]) <= 1e-6  # softmax of one key = its value


def test_empty_table_and_all_padding():
    q, cache, _ = random_case(3, 2, 3, 4, 16, 0)
    for table in (torch.zeros(2, 0, dtype=torch.int32, device=DEVICE), torch.full((2, 3), -1, device=DEVICE)):
        got = sparse_mla(q, cache, table, 0.1, backend="triton", config=CFG)
        assert bool((got.o == 0).all()) and bool((got.lse == float("-inf")).all())


def test_int32_table_strided_q_and_generic_widths():
    q, cache, table = random_case(8, 2, 3, 7, 16, 3, D=40)
    q_strided = torch.cat([q, q], dim=-1)[..., :40]  # last dim contiguous, row stride 80
    got = sparse_mla(q_strided, cache, table.int(), 0.2, v_dim=32, num_splits=2, backend="triton", config=CFG)
    assert_close(got, q, cache, table, 0.2, 32, torch.float32)
    no_rope = sparse_mla(q, cache, table, 0.2, v_dim=40, backend="triton", config=CFG)  # values = whole rows
    assert_close(no_rope, q, cache, table, 0.2, 40, torch.float32)


@pytest.mark.parametrize("tiles", TILES)
@pytest.mark.parametrize("seed, B, H, N, bs, M", [(11, 3, 17, 20, 64, 6), (12, 2, 5, 9, 16, 4)])
def test_tile_loaders_match_reference(tiles, seed, B, H, N, bs, M):
    """Each way of fetching a K tile (per token, one page slab, TMA) on fresh inputs: padding anywhere, an empty row."""
    q, cache, table = random_case(seed, B, H, N, bs, M, pad=0.4)
    table[0] = -1  # an empty row next to padded ones
    table[1, 0], table[1, -1] = -1, -1  # padding first and last
    config = {**CFG, "tiles": tiles}  # BLOCK_N 16: several tiles a page (bs 64), one a page (bs 16)
    assert resolve_tiles(config, cache, 512, explicit=True) == tiles
    for num_splits in (1, 3):
        got = sparse_mla(q, cache, table, 0.07, num_splits=num_splits, backend="triton", config=config)
        assert bool((got.o[0] == 0).all()) and bool((got.lse[0] == float("-inf")).all())
        assert_close(got, q, cache, table, 0.07, 512, torch.float32)


def test_tile_loaders_fall_back_where_they_do_not_apply():
    """bs % BLOCK_N != 0 -> per-token gather; pages that are not dense rows of the cache -> pointer pages, not TMA."""
    tma, default = {"BLOCK_N": 32, "tiles": "tma"}, {"BLOCK_N": 32}
    q, cache, table = random_case(13, 2, 3, 7, 48, 3)  # block size 48, BLOCK_N 32: tiles cross pages
    assert resolve_tiles(tma, cache, 512) == "gather"
    got = sparse_mla(q, cache, table, 0.1, backend="triton", config=default)
    assert_close(got, q, cache, table, 0.1, 512, torch.float32)
    with pytest.raises(QrouteError, match="tiles='pages' does not apply .* expected one of gather$"):
        sparse_mla(q, cache, table, 0.1, backend="triton", config={"BLOCK_N": 32, "tiles": "pages"})
    q, wide, table = random_case(14, 2, 3, 7, 64, 3)
    cache = wide[:, :32]  # pages of 32 rows, 64 rows apart
    assert resolve_tiles(tma, cache, 512) == "pages"
    got = sparse_mla(q, cache, table, 0.1, backend="triton", config=default)
    assert_close(got, q, cache, table, 0.1, 512, torch.float32)
    with pytest.raises(QrouteError, match="tiles='tma' does not apply .* expected one of gather, pages$"):
        sparse_mla(q, cache, table, 0.1, backend="triton", config=tma)


def test_split_parts_merge_to_the_whole():
    """Route's exactness: states over a partition of the table merge to the state over all of it."""
    q, cache, table = random_case(6, 2, 5, 12, 16, 6, pad=0.0)
    parts = [sparse_mla(q, cache, table[:, i : i + 2], 0.1, backend="triton", config=CFG) for i in (0, 2, 4)]
    merged = merge_partials(torch.stack([p.o for p in parts]), torch.stack([p.lse for p in parts]), backend="triton")
    whole = sparse_mla(q, cache, table, 0.1, backend="triton", config=CFG)
    assert rel_err(merged.o, whole.o) <= 1e-5 and lse_err(merged.lse, whole.lse) <= 1e-6


@pytest.mark.parametrize(
    "table, message",
    [
        ([[1, 4, 1]], "duplicate block id 1 in block_table row 0"),
        ([[1, 9, 2]], "block id 9 in block_table row 0 out of range"),
        ([[1, -2, 2]], "block id -2 .* out of range"),
    ],
)
def test_bad_block_ids_are_rejected(table, message):
    q, cache, _ = random_case(1, 1, 2, 9, 16, 0)
    with pytest.raises(QrouteError, match=message):
        sparse_mla(q, cache, torch.tensor(table, device=DEVICE), 0.1)
    with pytest.raises(QrouteError, match=message):
        sparse_mla_reference(q, cache, torch.tensor(table, device=DEVICE), 0.1)


def test_bad_shapes_and_dtypes_are_one_line_errors():
    q, cache, table = random_case(1, 2, 2, 9, 16, 2)
    bad = [
        ((q[0], cache, table), "q shape"),
        ((q, cache.bfloat16(), table), "cache dtype"),
        ((q, cache[..., :500], table), "cache row width 500"),
        ((q, cache, table[:1]), "block_table has 1 rows: expected B=2"),
        ((q, cache, table.float()), "block_table dtype"),
    ]
    for args, message in bad:
        with pytest.raises(QrouteError, match=message):
            sparse_mla(*args, 0.1)
    with pytest.raises(QrouteError, match="v_dim=600"):
        sparse_mla(q, cache, table, 0.1, v_dim=600)
    with pytest.raises(QrouteError, match="config="):
        sparse_mla(q, cache, table, 0.1, config={"BLOCK_M": 16})
    with pytest.raises(QrouteError, match="tiles='rows': expected one of gather, pages, tma"):
        sparse_mla(q, cache, table, 0.1, config={"tiles": "rows"})


@gpu
@needs_compiled_cuda
@pytest.mark.parametrize("B", [1, 64])
def test_gpu_realistic_shape_bf16(B):
    """H=128, top-k 2048 tokens (32 blocks of 64) over a 4096-block cache, bf16 with fp32 accumulation."""
    q, cache, table = random_case(B, B, 128, 4096, 64, 32, dtype=torch.bfloat16, pad=0.05, device="cuda")
    got = sparse_mla(q, cache, table, 576**-0.5)
    ref = sparse_mla_reference(q, cache, table, 576**-0.5)
    assert rel_err(got.o, ref.o) <= 1e-2 and lse_err(got.lse, ref.lse) <= 1e-3


@gpu
@needs_compiled_cuda
@pytest.mark.parametrize("tiles", TILES)
def test_gpu_tile_loaders_bf16(tiles):
    """Every loader compiled at the realistic shape, 20% padding anywhere and one empty row, on fresh inputs."""
    q, cache, table = random_case(70 + TILES.index(tiles), 64, 128, 4096, 64, 32, dtype=torch.bfloat16, pad=0.2,
                                  device="cuda")  # fmt: skip
    table[5] = -1
    got = sparse_mla(q, cache, table, 576**-0.5, config={"tiles": tiles})
    ref = sparse_mla_reference(q, cache, table, 576**-0.5)
    assert rel_err(got.o, ref.o) <= 1e-2 and lse_err(got.lse, ref.lse) <= 1e-3
    assert bool((got.o[5] == 0).all()) and bool((got.lse[5] == float("-inf")).all())


@gpu
@needs_compiled_cuda
def test_gpu_fp32_is_ieee_accurate():
    q, cache, table = random_case(3, 8, 32, 256, 64, 16, device="cuda")
    got = sparse_mla(q, cache, table, 576**-0.5, num_splits=4)
    assert_close(got, q, cache, table, 576**-0.5, 512, torch.float32)
