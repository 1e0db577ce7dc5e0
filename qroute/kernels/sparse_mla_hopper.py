"""Sparse MLA decode on Hopper, written in Gluon: the `sparse_mla` kernel with its warps laid out by hand.

Same contract as `sparse_mla._sparse_mla_kernel` (one program = 64 heads of one query x one split of
its block-table row, writing a partial state that `merge.launch_merge` combines), restricted to what
it was built and measured for: absorbed MLA rows (D = 576, v_dim = 512), bf16/fp16, block size a
multiple of 64, on sm_90. `reason_not(...)` says why it does not apply; `sparse_mla` then runs the
Triton kernel.

Why Gluon: with `tl.dot`, Triton lays the score dot that feeds the PV dot out as `[num_warps, 1]`,
so with 64 heads and 8 warps both warpgroups compute the same 64 x 64 scores. Here the layouts are
explicit (`[4, 2]` warps for both dots):
  - scores S = Q K^T [64, 64]: each warpgroup computes 32 of the 64 tokens (wgmma m64n32, Q and K
    read from shared memory; the rope part is a second, 64-deep dot into the same accumulator);
  - online softmax in base 2; the row max is reduced across the two warpgroups, the row sums are
    kept per element and reduced once at the end;
  - O += P V [64, 512]: P goes through shared memory, each warpgroup owns 256 of the 512 value
    columns (wgmma m64n256, V = the first 512 columns of the same K tile).
K tiles (64 tokens = one page slab, 73.7 KB) come in by TMA, two stages: the next tile is issued
before the current one is waited for, and a padded table entry points past the last row, so the
copy fills zeros without reading memory (its scores are masked). Q (72 KB) + two K stages + P use
225 KB of the 227 KB of shared memory, which is what caps the pipeline at two stages.
"""

from functools import lru_cache

import torch
from torch import Tensor

from qroute.kernels.dispatch import interpreting, triton

try:  # Gluon ships with triton >= 3.5; its TMA load was renamed in 3.7 (async_copy_global_to_shared -> async_load)
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.language.nvidia.hopper import (
        fence_async_shared,
        mbarrier,
        tma,
        warpgroup_mma,
        warpgroup_mma_wait,
    )
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor as GluonDescriptor

    _tma_load = getattr(tma, "async_load", None) or tma.async_copy_global_to_shared
except (ImportError, AttributeError):
    gluon = None

BLOCK_H, BLOCK_N, NUM_WARPS = 64, 64, 8
SHAPE = (576, 512)  # (D, v_dim): absorbed MLA, the only shape this kernel takes
LOG2E = 1.4426950408889634

if gluon is not None:

    @gluon.jit
    def _load_tile(k_desc, pe_desc, k_smem, pe_smem, bar, page, t, bs, rows_total, DV: gl.constexpr):
        # one K tile = BLOCK_N consecutive rows of one page; a padded entry (-1) points past the last row
        r = gl.where(page >= 0, page * bs + t % bs, rows_total)
        mbarrier.expect(bar, k_desc.block_type.nbytes + pe_desc.block_type.nbytes)
        _tma_load(k_desc, [r, 0], bar, k_smem)
        _tma_load(pe_desc, [r, DV], bar, pe_smem)

    @gluon.jit
    def _sparse_mla_hopper(
        q_desc, qpe_desc, k_desc, pe_desc, table_ptr, o_ptr, lse_ptr,  # q rows [B * H, D]; cache rows [N * bs, D]
        H, M, bs, entries_per_split, qk_scale,  # qk_scale = scale * log2(e)
        stride_tb, stride_te, stride_os, stride_ob, stride_oh, stride_ls, stride_lb,  # o [S, B, H, DV], lse [S, B, H]
        BLOCK_H: gl.constexpr, BLOCK_N: gl.constexpr, DV: gl.constexpr, DR: gl.constexpr, num_warps: gl.constexpr,
    ):  # fmt: skip
        hg, split, b = gl.program_id(0), gl.program_id(1), gl.program_id(2)
        dtype: gl.constexpr = k_desc.dtype
        S_L: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 2], instr_shape=[16, BLOCK_N // 2, 16])
        O_L: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 2], instr_shape=[16, DV // 2, 16])
        P_SL: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BLOCK_H, BLOCK_N], dtype)
        q_smem = gl.allocate_shared_memory(dtype, [BLOCK_H, DV], q_desc.layout)
        qpe_smem = gl.allocate_shared_memory(dtype, [BLOCK_H, DR], qpe_desc.layout)
        k_smem = gl.allocate_shared_memory(dtype, [2, BLOCK_N, DV], k_desc.layout)
        pe_smem = gl.allocate_shared_memory(dtype, [2, BLOCK_N, DR], pe_desc.layout)
        p_smem = gl.allocate_shared_memory(dtype, [BLOCK_H, BLOCK_N], P_SL)
        bars = gl.allocate_shared_memory(gl.int64, [3, 1], mbarrier.MBarrierLayout())  # K stage 0, 1; Q
        for i in gl.static_range(3):
            mbarrier.init(bars.index(i), count=1)

        row0 = b * H + hg * BLOCK_H  # rows past H belong to the next query (or are zero-filled): not stored
        mbarrier.expect(bars.index(2), q_desc.block_type.nbytes + qpe_desc.block_type.nbytes)
        _tma_load(q_desc, [row0, 0], bars.index(2), q_smem)
        _tma_load(qpe_desc, [row0, DV], bars.index(2), qpe_smem)

        e0 = split * entries_per_split
        t0 = e0 * bs
        n_t = (gl.minimum(e0 + entries_per_split, M) * bs - t0) // BLOCK_N  # tiles of this split
        rows_total = k_desc.shape[0]
        table_row = table_ptr + b.to(gl.int64) * stride_tb
        page = gl.load(table_row + (t0 // bs) * stride_te, mask=n_t > 0, other=-1).to(gl.int32)
        if n_t > 0:
            _load_tile(k_desc, pe_desc, k_smem.index(0), pe_smem.index(0), bars.index(0), page, t0, bs, rows_total, DV)

        m_i = gl.full([BLOCK_H], float("-inf"), gl.float32, gl.SliceLayout(1, S_L))
        l_t = gl.zeros([BLOCK_H, BLOCK_N], gl.float32, S_L)  # row sums per element: one cross-warp sum at the end
        acc = gl.zeros([BLOCK_H, DV], gl.float32, O_L)
        mbarrier.wait(bars.index(2), 0)
        for j in range(n_t):
            s = j % 2
            t1 = t0 + (j + 1) * BLOCK_N
            if j + 1 < n_t:  # the other stage was freed by the previous tile's PV: fetch the next tile into it
                nxt = gl.load(table_row + (t1 // bs) * stride_te).to(gl.int32)
                _load_tile(k_desc, pe_desc, k_smem.index(1 - s), pe_smem.index(1 - s), bars.index(1 - s), nxt, t1, bs,
                           rows_total, DV)  # fmt: skip
            else:
                nxt = page
            mbarrier.wait(bars.index(s), (j // 2) & 1)
            m_i, l_t, acc = _tile(q_smem, qpe_smem, k_smem.index(s), pe_smem.index(s), p_smem, page, m_i, l_t, acc,
                                  qk_scale, S_L, O_L)  # fmt: skip
            page = nxt

        for i in gl.static_range(3):
            mbarrier.invalidate(bars.index(i))
        o_base = o_ptr + split.to(gl.int64) * stride_os + b.to(gl.int64) * stride_ob
        lse_base = lse_ptr + split.to(gl.int64) * stride_ls + b.to(gl.int64) * stride_lb
        _write_state(acc, m_i, l_t, o_base, lse_base, hg * BLOCK_H, H, stride_oh, S_L, O_L)

    @gluon.jit
    def _tile(q_smem, qpe_smem, k_s, pe_s, p_smem, page, m_i, l_t, acc, qk_scale, S_L: gl.constexpr, O_L: gl.constexpr):
        # one K tile: scores (latent + rope dots), online softmax in base 2, O += P V; returns (m_i, l_t, acc)
        zero = gl.zeros(l_t.shape, gl.float32, S_L)
        sc = warpgroup_mma(q_smem, k_s.permute((1, 0)), zero, use_acc=False, is_async=True)
        sc = warpgroup_mma(qpe_smem, pe_s.permute((1, 0)), sc, is_async=True)
        sc = warpgroup_mma_wait(num_outstanding=0, deps=(sc,))
        sc = gl.where(page >= 0, sc * qk_scale, float("-inf"))
        m_new = gl.maximum(m_i, gl.max(sc, axis=1))
        m_safe = gl.where(m_new == float("-inf"), 0.0, m_new)  # no key yet: keep exp2 finite
        alpha = gl.exp2(m_i - m_safe)
        p = gl.exp2(sc - m_safe[:, None])  # 0 where masked
        p_smem.store(p.to(p_smem.dtype))
        fence_async_shared()
        acc = acc * gl.convert_layout(alpha, gl.SliceLayout(1, O_L))[:, None]
        acc = warpgroup_mma(p_smem, k_s, acc)  # values = the first DV columns of the same tile
        return m_new, l_t * alpha[:, None] + p, acc

    @gluon.jit
    def _write_state(acc, m_i, l_t, o_base, lse_base, h0, H, stride_oh, S_L: gl.constexpr, O_L: gl.constexpr):
        # o = acc / l into o_base[h, :], lse (natural log) into lse_base[h], for heads h0 + [0, BLOCK_H) below H
        BLOCK_H: gl.constexpr = acc.shape[0]
        DV: gl.constexpr = acc.shape[1]
        l_i = gl.sum(l_t, axis=1)
        empty = l_i == 0.0
        l_safe = gl.where(empty, 1.0, l_i)
        lse = gl.where(empty, float("-inf"), (m_i + gl.log2(l_safe)) * 0.6931471805599453)  # base 2 -> natural
        o = acc / gl.convert_layout(l_safe, gl.SliceLayout(1, O_L))[:, None]
        h = h0 + gl.arange(0, BLOCK_H, gl.SliceLayout(1, O_L))
        dv = gl.arange(0, DV, gl.SliceLayout(0, O_L))
        o_ptrs = o_base + h[:, None] * stride_oh + dv[None, :]
        gl.store(o_ptrs, o.to(o_base.dtype.element_ty), mask=(h[:, None] < H) & (dv[None, :] < DV))
        hs = h0 + gl.arange(0, BLOCK_H, gl.SliceLayout(1, S_L))
        gl.store(lse_base + hs, lse, mask=hs < H)

def available() -> bool:
    """True when this Triton has Gluon with Hopper's TMA and wgmma."""
    return gluon is not None


def reason_not(q: Tensor, cache: Tensor, v_dim: int, usable_tiles: tuple[str, ...]) -> str | None:
    """Why the Hopper kernel cannot run on these inputs, or None when it can.

    `usable_tiles` comes from `sparse_mla._usable_tiles(cache, v_dim, 64)`: "tma" there means TMA-loadable pages.
    """
    checks = (  # in order; each test runs only if the ones before it passed
        (lambda: not available(), "this triton has no Gluon (needs triton >= 3.5)"),
        (interpreting, "Gluon kernels do not run in Triton's interpreter"),
        (lambda: not q.is_cuda or _capability(q.device) != 9, "it needs an sm_90 (Hopper) GPU"),
        (lambda: q.dtype not in (torch.bfloat16, torch.float16), f"dtype {q.dtype}: it takes bfloat16 or float16"),
        (lambda: (q.shape[2], v_dim) != SHAPE, f"D={q.shape[2]}, v_dim={v_dim}: it takes D=576, v_dim=512"),
        (lambda: "tma" not in usable_tiles, "the cache's pages are not TMA-loadable slabs of 64 rows"),
        (lambda: not q.is_contiguous() or q.data_ptr() % 16, "q must be contiguous and 16-byte aligned"),
    )
    return next((why for bad, why in checks if bad()), None)


@lru_cache(maxsize=8)
def _capability(device: torch.device) -> int:
    return torch.cuda.get_device_capability(device)[0]


def launch(q: Tensor, cache: Tensor, table: Tensor, scale: float, part_o: Tensor, part_lse: Tensor, per_split: int):
    """Partial states of every (query, 64-head group, split) into `part_o [S, B, H, 512]`, `part_lse [S, B, H]`.

    q [B, H, 576] contiguous, cache [N, bs, 576] (bs % 64 == 0, pages consecutive rows), table [B, M] int32/int64,
    `per_split` table entries per split (S = part_o.shape[0]). Inputs are assumed checked (`reason_not` is None).
    """
    (B, H, D), v_dim = q.shape, SHAPE[1]
    qd, qpd, kd, ped = _descriptors(q, cache, v_dim)
    grid = (triton.cdiv(H, BLOCK_H), part_o.shape[0], B)  # head groups of one query adjacent: they share K in L2
    _sparse_mla_hopper[grid](
        qd, qpd, kd, ped, table, part_o, part_lse,
        H, table.shape[1], cache.shape[1], per_split, scale * LOG2E,
        *table.stride(), *part_o.stride()[:3], *part_lse.stride()[:2],
        BLOCK_H=BLOCK_H, BLOCK_N=BLOCK_N, DV=v_dim, DR=D - v_dim, num_warps=NUM_WARPS,
    )  # fmt: skip


def _descriptors(q: Tensor, cache: Tensor, v_dim: int):
    """TMA descriptors: q's latent and rope columns ([B * H, D] rows), the cache's ([N * bs, D] rows)."""
    D = q.shape[2]
    dt = gl.bfloat16 if q.dtype == torch.bfloat16 else gl.float16
    q_rows, rows = q.view(-1, D), cache.view(-1, D)

    def desc(t: Tensor, width: int, block: list[int]):
        layout = gl.NVMMASharedLayout.get_default_for(block, dt)
        return GluonDescriptor(t, [t.shape[0], width], [D, 1], block, layout)

    return (
        desc(q_rows, v_dim, [BLOCK_H, v_dim]),
        desc(q_rows, D, [BLOCK_H, D - v_dim]),  # loaded at column v_dim
        desc(rows, v_dim, [BLOCK_N, v_dim]),
        desc(rows, D, [BLOCK_N, D - v_dim]),
    )


def compile_sm90():
    """Build the kernel for sm_90a on any machine (no GPU needed: Triton's bundled ptxas) and return Triton's compiled
    kernel (`.asm["ptx"]`, `.asm["cubin"]`, `.metadata.shared`). Not under TRITON_INTERPRET=1 (Gluon is compiled only).
    """
    from triton import compile as triton_compile
    from triton.backends.compiler import GPUTarget
    from triton.experimental.gluon._runtime import GluonASTSource
    from triton.runtime.jit import mangle_type

    q, cache = torch.empty(4, 128, 576, dtype=torch.bfloat16), torch.empty(16, 64, 576, dtype=torch.bfloat16)
    descs = dict(zip(("q_desc", "qpe_desc", "k_desc", "pe_desc"), _descriptors(q, cache, SHAPE[1])))
    consts = dict(BLOCK_H=BLOCK_H, BLOCK_N=BLOCK_N, DV=SHAPE[1], DR=SHAPE[0] - SHAPE[1], num_warps=NUM_WARPS)
    types = {"table_ptr": "*i32", "o_ptr": "*bf16", "lse_ptr": "*fp32", "qk_scale": "fp32"}
    fn = _sparse_mla_hopper
    sig = {n: mangle_type(descs[n]) if n in descs else types.get(n, "constexpr" if n in consts else "i32") for n in fn.arg_names}
    src = GluonASTSource(fn, sig, constexprs={(fn.arg_names.index(k),): v for k, v in consts.items()})
    return triton_compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": NUM_WARPS})

