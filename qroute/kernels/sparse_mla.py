"""Sparse MLA decode: partial attention of absorbed query rows over the selected blocks of a paged latent cache.

Absorbed MLA has one shared 576-wide latent KV row per token: keys are the whole row, values
its first `v_dim` (512) columns. Each query `b` has its own selection (a row of the block
table, `-1` = padding, anywhere in the row). Flash-decoding: a program owns BLOCK_H heads of
one query and a contiguous part ("split") of its block-table row, streams the selected
tokens BLOCK_N at a time with an online base-2 softmax, and writes a partial state; with
several splits per query (split-K, what fills the GPU at small B) `merge.launch_merge`
combines them. LSE is converted to natural log at the boundary.

K tiles are fetched one of three ways (`TILES`, see `resolve_tiles`): "gather" looks up the table
entry of every token (any block size); when block_size % BLOCK_N == 0 a tile is BLOCK_N
consecutive rows of one page, so "pages" reads one entry per tile and loads a contiguous slab,
and "tma" loads that slab with the copy engine (Hopper tensor descriptors).

Cost is proportional to the table width: padded entries are masked, not skipped (the page
loaders do not read their rows, but the tile is still computed).
"""

import math
from functools import lru_cache

import torch
from torch import Tensor

from qroute.attention import AttentionState, attend
from qroute.errors import QrouteError
from qroute.kernels.checks import FLOATS, INDEX, dense_last, expect_dtype, expect_ndim, expect_out
from qroute.kernels.dispatch import interpreting, same_device, triton, use_triton
from qroute.kernels.merge import launch_merge
from qroute.kernels import sparse_mla_hopper as hopper
from qroute.kernels import sparse_mla_triton as triton_kernel
from qroute.kernels.sparse_mla_triton import TILES, TensorDescriptor

WHAT = "sparse_mla"
# Per compute dtype, from sweeps on an H100 (bf16, H=128, top-k 2048, block size 64; triton 3.6):
# 64 heads x 64 tokens per step, 8 warps, 2 stages was fastest for B = 8..128; at B=1, 32 heads
# (more programs) was 10% faster. TMA page slabs took 20-24% less time than per-token gathers at B >= 32
# and 10-12% less than pointer page slabs; 32-token tiles with 3-4 stages were slower (smaller MMAs), 3 stages
# of 64 tokens exceed shared memory. fp32 tiles are twice as big: fewer tokens per step.
# "kernel": "gluon" = `sparse_mla_hopper` (Hopper, bf16/fp16, D=576: 1.7x faster than the Triton kernel at B >= 32 on
# an H100) where it applies, else `sparse_mla_triton`; the other keys configure the Triton kernel.
CONFIGS = {
    "half": {"BLOCK_H": 64, "BLOCK_N": 64, "num_warps": 8, "num_stages": 2, "tiles": "tma", "kernel": "gluon"},
    "fp32": {"BLOCK_H": 32, "BLOCK_N": 32, "num_warps": 8, "num_stages": 1, "tiles": "pages", "kernel": "triton"},
    "interpreter": {"BLOCK_H": 16, "BLOCK_N": 32, "tiles": "tma", "kernel": "triton"},
}
KERNELS = ("triton", "gluon")
TRITON_KNOBS = ("BLOCK_H", "BLOCK_N", "num_warps", "num_stages", "tiles")

def sparse_mla(
    q: Tensor,
    cache: Tensor,
    block_table: Tensor,
    scale: float,
    v_dim: int = 512,
    *,
    num_splits: int | None = None,
    config: dict | None = None,
    check: bool = True,
    out: tuple[Tensor, Tensor] | None = None,
    backend: str = "auto",
) -> AttentionState:
    """Attention state of each query's rows over its selected blocks of a paged latent cache.

    q            [B, H, D]              float32/bfloat16/float16 (absorbed MLA: D = 576)
    cache        [num_blocks, bs, D]    same dtype as q; values are columns [0, v_dim) of each row
    block_table  [B, max_blocks]        int32/int64 block ids, -1 = padding (anywhere in a row)
    scale        softmax scale applied to q . k
    v_dim        value width, <= D (absorbed MLA: the 512-wide latent)
    num_splits   programs per (query, head group) over parts of the table row; None = fill the device
    config       overrides of `default_config`: kernel ("gluon": the Hopper kernel, an error where it does not
                 apply; "triton"), and the Triton kernel's BLOCK_H, BLOCK_N, num_warps, num_stages, tiles (how a
                 K tile is fetched: "gather" per token, "pages" / "tma" one page slab; see `resolve_tiles`);
                 any of those five without "kernel" selects the Triton kernel
    check        validate block ids: in range, no duplicate in a row (syncs the device; unchecked
                 duplicates are counted twice by the softmax)
    out          optional (o [B, H, v_dim] dtype of q, lse [B, H] float32), contiguous
    Returns `(o [B, H, v_dim], lse [B, H])`, lse float32 natural log; an empty row gives `(0, -inf)`.
    Triton on CUDA (bf16/fp16: bf16 tensor-core dots, fp32 accumulation; fp32: IEEE dots) or
    under TRITON_INTERPRET=1 on CPU; `sparse_mla_reference` elsewhere (see `qroute.kernels`).
    """
    B, H, D = _check(q, cache, block_table, v_dim)
    _check_knobs(scale, num_splits, config)
    if check:
        check_block_table(block_table, cache.shape[0])
    if out is not None:
        expect_out(WHAT, "out[0]", out[0], (B, H, v_dim), q.dtype, q.device)
        expect_out(WHAT, "out[1]", out[1], (B, H), torch.float32, q.device)
    if not use_triton(backend, q.device, WHAT):
        state = sparse_mla_reference(q, cache, block_table, scale, v_dim, check=False)
        return state if out is None else AttentionState(out[0].copy_(state.o), out[1].copy_(state.lse))
    o, lse = out if out is not None else (q.new_empty(B, H, v_dim), torch.empty(B, H, device=q.device))
    _launch(dense_last(q), dense_last(cache), block_table, scale, v_dim, o, lse, num_splits, config)
    return AttentionState(o, lse)


def _launch(q, cache, table, scale, v_dim, o, lse, num_splits, config) -> None:
    # q: [B, H, D], cache: [N, bs, D], table: [B, M], o: [B, H, V], lse: [B, H]
    (B, H, _), M = q.shape, table.shape[1]
    if B * H == 0:
        return
    config = config or {}
    meta = {**default_config(q.dtype, H, B * M, q.device), **config}
    gluon = resolve_kernel(meta, q, cache, v_dim, config) == "gluon"
    if not gluon:
        meta["tiles"] = resolve_tiles(meta, cache, v_dim, explicit="tiles" in config)
    splits = num_splits or default_splits(B, H, M, q.device, hopper.BLOCK_H if gluon else meta["BLOCK_H"])
    per_split = max(1, triton.cdiv(M, max(1, min(splits, M))))
    splits = max(1, triton.cdiv(M, per_split))
    if splits == 1:
        part_o, part_lse = o.unsqueeze(0), lse.unsqueeze(0)  # write the final state directly
    else:  # partials in q's dtype (fp32 for fp32 q): half the combine's traffic for bf16
        part_o = torch.empty(splits, B, H, v_dim, device=q.device, dtype=q.dtype)
        part_lse = torch.empty(splits, B, H, device=q.device, dtype=torch.float32)
    if gluon:
        hopper.launch(q, cache, table, scale, part_o, part_lse, per_split)
    else:
        triton_kernel.launch(q, cache, table, scale, v_dim, part_o, part_lse, per_split, meta)
    if splits > 1:
        R = B * H
        launch_merge(part_o.view(splits, R, v_dim), part_lse.view(splits, R), o.view(R, v_dim), lse.view(R))


def resolve_kernel(meta: dict, q: Tensor, cache: Tensor, v_dim: int, config: dict) -> str:
    """"gluon" (`sparse_mla_hopper`) or "triton": `meta["kernel"]`, unless Triton knobs in `config` ask for the Triton
    kernel, or the Hopper kernel does not apply (an error when `config` asked for it by name)."""
    want = meta.pop("kernel")
    if want == "triton" or ("kernel" not in config and any(k in config for k in TRITON_KNOBS)):
        return "triton"
    why = hopper.reason_not(q, cache, v_dim, _usable_tiles(cache, v_dim, hopper.BLOCK_N))
    if why is not None and "kernel" in config:
        raise QrouteError(f"{WHAT}: config kernel='gluon' does not apply: {why}")
    return "triton" if why is not None else "gluon"


def resolve_tiles(config: dict, cache: Tensor, v_dim: int, explicit: bool = False) -> str:
    """The tile loader to run: `config["tiles"]` if it applies to `cache`, else the next simpler one that does.

    "tma" needs Hopper (or the interpreter), `block_size % BLOCK_N == 0`, rows `[N * bs, D]` dense with 16-byte
    aligned strides and `v_dim` columns; "pages" needs `block_size % BLOCK_N == 0`; "gather" always applies.
    With `explicit` (a caller asked for it) a loader that does not apply is an error instead.
    """
    usable = _usable_tiles(cache, v_dim, config["BLOCK_N"])
    want = config["tiles"]
    if want not in usable and explicit:
        raise QrouteError(
            f"{WHAT}: config tiles={want!r} does not apply to a cache {tuple(cache.shape)} {cache.dtype} with "
            f"BLOCK_N={config['BLOCK_N']}: expected one of {', '.join(usable)}"
        )
    return max((t for t in usable if TILES.index(t) <= TILES.index(want)), key=TILES.index)


def _usable_tiles(cache: Tensor, v_dim: int, block_n: int) -> tuple[str, ...]:
    N, bs, D = cache.shape
    if bs % block_n or N == 0:
        return ("gather",)
    size = cache.element_size()
    tma = (
        TensorDescriptor is not None
        and (interpreting() or (cache.is_cuda and _capability(cache.device) >= 9))
        and (N == 1 or cache.stride(0) == bs * cache.stride(1))  # pages are consecutive rows
        and (cache.stride(1) * size) % 16 == 0
        and (v_dim * size) % 16 == 0
        and cache.data_ptr() % 16 == 0
        and N * bs < 2**31
        and block_n <= 256
    )
    return TILES if tma else TILES[:2]


def default_config(dtype: torch.dtype, H: int, entries: int = 1 << 30, device: torch.device | None = None) -> dict:
    """Block sizes, warps and stages for `dtype`.

    BLOCK_H shrinks to H (but stays >= 16, what tl.dot needs), and to 32 heads when even one
    block-table entry per program (`entries` = B * max_blocks) would leave SMs idle (B = 1); the
    Triton kernel takes those small batches (the Hopper kernel's 64 heads are fixed).
    """
    cfg = dict(CONFIGS["interpreter" if interpreting() else "fp32" if dtype == torch.float32 else "half"])
    if device is not None and entries * triton.cdiv(H, cfg["BLOCK_H"]) < _sm_count(device):
        cfg["BLOCK_H"] = min(cfg["BLOCK_H"], 32)
        cfg["kernel"] = "triton"
    cfg["BLOCK_H"] = min(cfg["BLOCK_H"], max(16, triton.next_power_of_2(H)))
    return cfg


@lru_cache(maxsize=8)
def _sm_count(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 4


@lru_cache(maxsize=8)
def _capability(device: torch.device) -> int:
    return torch.cuda.get_device_capability(device)[0]


def default_splits(B: int, H: int, max_blocks: int, device: torch.device, block_h: int = 64) -> int:
    """Splits per query so that the programs make about one full wave (1 when B's programs alone do)."""
    programs = B * triton.cdiv(H, block_h)
    return max(1, min(_sm_count(device) // programs, max_blocks, 64))


def sparse_mla_reference(
    q: Tensor, cache: Tensor, block_table: Tensor, scale: float, v_dim: int = 512, check: bool = True
) -> AttentionState:
    """The torch oracle (same contract as `sparse_mla`): gather every query's blocks, `attend` with padding masked."""
    B, H, D = _check(q, cache, block_table, v_dim)
    if check:
        check_block_table(block_table, cache.shape[0])
    if cache.shape[0] == 0:  # nothing to gather: every id is padding
        block_table = block_table[:, :0]
    bs, M = cache.shape[1], block_table.shape[1]
    keys = cache[block_table.long().clamp(min=0)].reshape(B, M * bs, D)  # [B, T, D]
    allowed = (block_table >= 0).repeat_interleave(bs, dim=1)  # [B, T]
    mask = allowed[:, None, :].expand(B, H, M * bs)  # [B, H, T]
    return attend(q, keys, keys[..., :v_dim], scale, mask=mask, check=False)


def check_block_table(block_table: Tensor, num_blocks: int) -> None:
    """Every id is -1 (padding) or in `[0, num_blocks)`, and no id repeats within a row (one device sync)."""
    t = block_table.long()
    bad = (t < -1) | (t >= num_blocks)
    s = t.sort(dim=1).values
    dup = (s[:, 1:] == s[:, :-1]) & (s[:, 1:] >= 0)  # [B, M - 1]
    if not bool(bad.any() | dup.any()):
        return
    if bool(bad.any()):
        row = int(bad.nonzero()[0, 0])
        raise QrouteError(
            f"{WHAT}: block id {int(t[bad][0])} in block_table row {row} out of range: expected -1 or 0 <= id < {num_blocks}"
        )
    row, col = (int(x) for x in dup.nonzero()[0])
    raise QrouteError(
        f"{WHAT}: duplicate block id {int(s[row, col + 1])} in block_table row {row}: expected each block at most once per query"
    )


def _check_knobs(scale: float, num_splits: int | None, config: dict | None) -> None:
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
        raise QrouteError(f"{WHAT}: scale={scale!r}: expected a finite number")
    if num_splits is not None and (isinstance(num_splits, bool) or not isinstance(num_splits, int) or num_splits < 1):
        raise QrouteError(f"{WHAT}: num_splits={num_splits!r}: expected None or an integer >= 1")
    if config is not None and set(config) - {"kernel", *TRITON_KNOBS}:
        raise QrouteError(f"{WHAT}: config={config!r}: expected keys among kernel, {', '.join(TRITON_KNOBS)}")
    if config is not None and config.get("kernel", "triton") not in KERNELS:
        raise QrouteError(f"{WHAT}: config kernel={config['kernel']!r}: expected one of {', '.join(KERNELS)}")
    if config is not None and config.get("tiles", "gather") not in TILES:
        raise QrouteError(f"{WHAT}: config tiles={config['tiles']!r}: expected one of {', '.join(TILES)}")


def _check(q: Tensor, cache: Tensor, table: Tensor, v_dim: int) -> tuple[int, int, int]:
    expect_ndim(WHAT, "q", q, 3, "[B, H, D]")
    expect_ndim(WHAT, "cache", cache, 3, "[num_blocks, block_size, D]")
    expect_ndim(WHAT, "block_table", table, 2, "[B, max_blocks]")
    expect_dtype(WHAT, "q", q, FLOATS)
    expect_dtype(WHAT, "block_table", table, INDEX)
    if cache.dtype != q.dtype:
        raise QrouteError(f"{WHAT}: cache dtype {cache.dtype}: expected {q.dtype} like q")
    B, H, D = q.shape
    if cache.shape[2] != D:
        raise QrouteError(f"{WHAT}: cache row width {cache.shape[2]}: expected {D} like q")
    if table.shape[0] != B:
        raise QrouteError(f"{WHAT}: block_table has {table.shape[0]} rows: expected B={B}")
    if isinstance(v_dim, bool) or not isinstance(v_dim, int) or not 1 <= v_dim <= D:
        raise QrouteError(f"{WHAT}: v_dim={v_dim!r}: expected an integer in [1, {D}]")
    if cache.shape[1] < 1:
        raise QrouteError(f"{WHAT}: block_size {cache.shape[1]}: expected >= 1")
    same_device(WHAT, [("q", q), ("cache", cache), ("block_table", table)])
    return B, H, D
