"""The Triton kernel of `sparse_mla` (any GPU Triton runs on, and the interpreter): one program = BLOCK_H heads of one
query x one split of its block-table row, streaming the selected tokens BLOCK_N at a time with an online base-2
softmax and writing a partial state. `sparse_mla` checks the inputs, picks the knobs and the tile loader, and merges
the splits; `sparse_mla_hopper` is the same contract in Gluon for Hopper.
"""

import math

import torch

from qroute.kernels.dispatch import LazyKernel, interpreting, tl, triton

try:  # host-side TMA descriptors (triton >= 3.4)
    from triton.tools.tensor_descriptor import TensorDescriptor
except ImportError:
    TensorDescriptor = None

LOG2E = 1.0 / math.log(2.0)
TILES = ("gather", "pages", "tma")  # how a K tile is fetched, simplest first (see `_tile_rows`)

if triton is not None:
    # The kernel and its helpers are plain functions, jitted on first launch by `LazyKernel` (helpers listed there).

    def _sparse_mla_kernel(
        q_ptr, cache_ptr, k_desc, pe_desc, table_ptr, o_ptr, lse_ptr,  # q [B, H, D], cache [N, bs, D], table [B, M]
        H, D, V, M, bs, entries_per_split, qk_scale,  # qk_scale = scale * log2(e)
        stride_qb, stride_qh, stride_cn, stride_ct, stride_tb, stride_te,
        stride_os, stride_ob, stride_oh, stride_ls, stride_lb, stride_lh,  # o [S, B, H, V], lse [S, B, H]
        BLOCK_H: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_DV: tl.constexpr, BLOCK_DR: tl.constexpr,
        HAS_PE: tl.constexpr, F32: tl.constexpr, TILES: tl.constexpr, EVEN: tl.constexpr,
    ):  # fmt: skip
        # TILES: 0 = gather (a tile's tokens may span pages: one table entry per token), 1 = pages (bs % BLOCK_N
        # == 0: a tile is a contiguous slab of one page, one table entry per tile), 2 = pages through the tensor
        # descriptors k_desc [N * bs, V] / pe_desc [N * bs, D] (TMA). EVEN: V == BLOCK_DV and D - V == BLOCK_DR.
        split, b = tl.program_id(1), tl.program_id(2).to(tl.int64)
        h = tl.program_id(0) * BLOCK_H + tl.arange(0, BLOCK_H)  # [BLOCK_H]
        dv = tl.arange(0, BLOCK_DV)  # latent columns [0, V)
        dr = V + tl.arange(0, BLOCK_DR)  # rope columns [V, D)
        q_rows = q_ptr + b * stride_qb + h[:, None] * stride_qh
        q_nope = _load_q(q_rows, h, H, dv, V, F32)  # [BH, DV]
        if HAS_PE:
            q_pe = _load_q(q_rows, h, H, dr, D, F32)  # [BH, DR]
        m_i = tl.full([BLOCK_H], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_H], tl.float32)
        acc = tl.zeros([BLOCK_H, BLOCK_DV], tl.float32)
        e0 = split * entries_per_split
        t1 = tl.minimum(e0 + entries_per_split, M) * bs
        table_row = table_ptr + b * stride_tb
        for start in range(e0 * bs, t1, BLOCK_N):
            keep, rows, k_mask = _tile_rows(
                table_row, cache_ptr, k_desc, start, t1, bs, stride_te, stride_cn, stride_ct, BLOCK_N, TILES
            )
            k = _load_k(k_desc, rows, k_mask, 0, dv, V, TILES, EVEN, F32)  # [BN, DV]
            s = _scores(q_nope, k, F32)  # [BLOCK_H, BLOCK_N]
            if HAS_PE:
                s += _scores(q_pe, _load_k(pe_desc, rows, k_mask, V, dr, D, TILES, EVEN, F32), F32)  # k_pe [BN, DR]
            m_i, l_i, acc = _softmax_step(s, keep, k, m_i, l_i, acc, qk_scale, F32)
        _store_state(
            acc, l_i, m_i, o_ptr, lse_ptr, split, b, h, dv, H, V,
            stride_os, stride_ob, stride_oh, stride_ls, stride_lb, stride_lh,
        )  # fmt: skip

    def _load_q(q_rows, h, H, cols, n_cols, F32: tl.constexpr):
        # columns `cols` (< n_cols) of the program's query rows (h < H)
        q = tl.load(q_rows + cols[None, :], mask=(h[:, None] < H) & (cols[None, :] < n_cols), other=0.0)
        if F32:
            q = q.to(tl.float32)
        return q

    def _tile_rows(
        table_row, cache_ptr, k_desc, start, t1, bs, stride_te, stride_cn, stride_ct,
        BLOCK_N: tl.constexpr, TILES: tl.constexpr,
    ):  # fmt: skip
        # Where the tile of tokens [start, start + BLOCK_N) of the selection lies: (keep, rows, k_mask) with keep the
        # scores' mask, rows [BLOCK_N] row pointers and k_mask their load mask (TILES 0, 1), or rows the tile's first
        # row in the descriptors (TILES 2).
        if TILES == 0:
            t = start + tl.arange(0, BLOCK_N)  # [BLOCK_N] token index within this query's selection
            page = tl.load(table_row + (t // bs) * stride_te, mask=t < t1, other=-1)
            keep = (page >= 0)[None, :]  # [1, BLOCK_N]
            rows = cache_ptr + tl.where(page >= 0, page, 0).to(tl.int64) * stride_cn + (t % bs) * stride_ct
            k_mask = (page >= 0)[:, None]
        else:
            page = tl.load(table_row + (start // bs) * stride_te)  # one entry: the tile lies in one page
            keep = page >= 0  # a padded entry: the whole tile is masked
            r0 = start % bs
            if TILES == 1:
                rows = cache_ptr + tl.maximum(page, 0).to(tl.int64) * stride_cn
                rows += (r0 + tl.arange(0, BLOCK_N)) * stride_ct
                k_mask = (tl.zeros([BLOCK_N, 1], tl.int32) + page) >= 0  # keep as [BN, 1]: padded, not read
        if TILES == 2:  # a padded entry points past the last row: TMA fills zeros without reading memory
            rows = tl.where(keep, page * bs + r0, k_desc.shape[0]).to(tl.int32)
            k_mask = keep  # unused: the descriptor masks by row
        return keep, rows, k_mask

    def _load_k(desc, rows, k_mask, col0, cols, n_cols, TILES: tl.constexpr, EVEN: tl.constexpr, F32: tl.constexpr):
        # the tile's columns `cols` (< n_cols, from col0 in the descriptor): [BN, DV] latent or [BN, DR] rope
        if TILES == 2:
            k = desc.load([rows, col0])
        elif EVEN:
            k = tl.load(rows[:, None] + cols[None, :], mask=k_mask, other=0.0)
        else:
            k = tl.load(rows[:, None] + cols[None, :], mask=k_mask & (cols[None, :] < n_cols), other=0.0)
        if F32:
            k = k.to(tl.float32)
        return k

    def _scores(q, k, F32: tl.constexpr):
        # q . k^T: [BLOCK_H, BLOCK_N]
        if F32:
            s = tl.dot(q, tl.trans(k), input_precision="ieee")
        else:
            s = tl.dot(q, tl.trans(k))
        return s

    def _softmax_step(s, keep, k, m_i, l_i, acc, qk_scale, F32: tl.constexpr):
        # one tile of the online base-2 softmax: the new (m_i, l_i, acc)
        s = tl.where(keep, s * qk_scale, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # no key yet: keep exp2 finite
        alpha = tl.exp2(m_i - m_safe)
        p = tl.exp2(s - m_safe[:, None])  # [BLOCK_H, BLOCK_N], 0 where masked
        l_i = l_i * alpha + tl.sum(p, axis=1)
        if F32:
            acc = acc * alpha[:, None] + tl.dot(p, k, input_precision="ieee")
        else:
            acc = acc * alpha[:, None] + tl.dot(p.to(k.dtype), k)
        return m_new, l_i, acc

    def _store_state(
        acc, l_i, m_i, o_ptr, lse_ptr, split, b, h, dv, H, V,
        stride_os, stride_ob, stride_oh, stride_ls, stride_lb, stride_lh,
    ):  # fmt: skip
        # the program's partial state: o = acc / l, lse in natural log; an empty row gives (0, -inf)
        empty = l_i == 0.0
        l_safe = tl.where(empty, 1.0, l_i)
        o = acc / l_safe[:, None]
        lse = tl.where(empty, float("-inf"), (m_i + tl.log2(l_safe)) / 1.4426950408889634)  # base 2 -> natural
        o_rows = o_ptr + split * stride_os + b * stride_ob + h[:, None] * stride_oh
        tl.store(o_rows + dv[None, :], o.to(o_ptr.dtype.element_ty), mask=(h[:, None] < H) & (dv[None, :] < V))
        tl.store(lse_ptr + split * stride_ls + b * stride_lb + h * stride_lh, lse, mask=h < H)

    _SPARSE_MLA = LazyKernel(
        _sparse_mla_kernel,
        do_not_specialize=["M", "entries_per_split"],
        helpers=(_load_q, _tile_rows, _load_k, _scores, _softmax_step, _store_state),
    )


def launch(q, cache, table, scale, v_dim, part_o, part_lse, per_split, meta) -> None:
    """Partial states of every (query, head group, split) into `part_o [S, B, H, v_dim]`, `part_lse [S, B, H]`.

    q [B, H, D], cache [N, bs, D] (last dims dense), table [B, M], `per_split` table entries per split; `meta` the
    Triton knobs (BLOCK_H, BLOCK_N, num_warps, num_stages, tiles: a name in TILES that applies, `resolve_tiles`).
    Inputs are assumed checked."""
    (B, H, D), splits = q.shape, part_o.shape[0]
    f32 = interpreting() or q.dtype == torch.float32  # the interpreter's bf16 tl.dot is wrong
    dv, dr = triton.next_power_of_2(v_dim), max(16, triton.next_power_of_2(max(D - v_dim, 1)))
    tiles = TILES.index(meta.pop("tiles"))
    meta.update(BLOCK_DV=dv, BLOCK_DR=dr, HAS_PE=D > v_dim, F32=f32, TILES=tiles, EVEN=dv == v_dim and dr == D - v_dim)
    k_desc = pe_desc = None
    if tiles == 2:  # the cache as rows [N * bs, D]: a tile is BLOCK_N consecutive rows of one page
        rows, bn = cache.view(-1, D), meta["BLOCK_N"]
        k_desc = TensorDescriptor(rows, [rows.shape[0], v_dim], [rows.stride(0), 1], [bn, dv])  # latent columns
        pe_desc = TensorDescriptor(rows, [rows.shape[0], D], [rows.stride(0), 1], [bn, dr])  # read at column v_dim
    grid = (triton.cdiv(H, meta["BLOCK_H"]), splits, B)  # head groups of one query adjacent: they share K in L2
    _SPARSE_MLA.get()[grid](
        q, cache, k_desc, pe_desc, table, part_o, part_lse,
        H, D, v_dim, table.shape[1], cache.shape[1], per_split, scale * LOG2E,
        q.stride(0), q.stride(1), cache.stride(0), cache.stride(1), table.stride(0), table.stride(1),
        *part_o.stride()[:3], *part_lse.stride(),
        **meta,
    )  # fmt: skip
