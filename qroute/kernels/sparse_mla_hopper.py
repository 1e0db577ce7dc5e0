"""Sparse MLA decode on Hopper, written in Gluon: the `sparse_mla` kernel with warps given their own jobs.

Same contract as `sparse_mla_triton._sparse_mla_kernel` (one program = 64 heads of one query x one split of
its block-table row, writing a partial state that `merge.launch_merge` combines), restricted to what
it was built and measured for: absorbed MLA rows (D = 576, v_dim = 512), bf16/fp16, block size a
multiple of 64, on sm_90. `reason_not(...)` says why it does not apply; `sparse_mla` then runs the
Triton kernel.

Why Gluon: with `tl.dot`, Triton lays the score dot that feeds the PV dot out as `[num_warps, 1]`,
so with 64 heads and 8 warps both warpgroups compute the same 64 x 64 scores. Here two warpgroups
are warp-specialized (`gl.warp_specialize`), in the manner of FlashMLA / FlashInfer's Hopper MLA:
  - warpgroup 0 (the default partition): scores S = Q K^T [64, 64] alone (wgmma m64n64 over the 512
    latent + 64 rope columns, Q and K from shared memory), the online softmax in base 2 (row max and
    sum inside its warps), then P into the tile's rope slot (read only by its own score dot) and the
    rescale factors into shared memory, a "P ready" signal, and O[:, :256] += P V[:, :256];
  - warpgroup 1 (the worker): the TMA loads, and O[:, 256:] += P V[:, 256:] once P is ready, so its
    half of the value dot runs while warpgroup 0 computes the next tile's scores.
K tiles (64 tokens = one page slab, 73.7 KB) come by TMA into two stages; a stage is refilled once
both warpgroups have released it (an mbarrier of count 2); the first two tiles are issued beside Q, before
the warpgroups split. A padded table entry points past the last row, so the copy fills zeros without
reading memory (its scores are masked). Q (72 KB) and two K stages take 216 KB of the 227 KB of shared
memory, which caps the pipeline at two stages. Each warpgroup writes its half of O through shared memory
it no longer reads (Q's, a K stage), a whole row of 256 values per warp store: stored straight from the
accumulator's layout (4 bytes a thread) the halves took 3-7 us at the end of every program, a sixth of
the kernel at 32 queries (docs/kernels.md).
"""

from functools import lru_cache

import torch
from torch import Tensor

from qroute.kernels.dispatch import interpreting, triton

try:  # Gluon ships with triton >= 3.5; its TMA load was renamed after 3.6 (async_copy_global_to_shared -> async_load)
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
    _barrier = getattr(gl, "thread_barrier", None) or gl.barrier  # renamed after 3.6 too: a barrier of the partition's warps
    _NEW_REINTERPRET = gl.constexpr(hasattr(gl.shared_memory_descriptor, "reinterpret"))  # `_reinterpret` up to 3.6
except (ImportError, AttributeError):
    gluon = None

BLOCK_H, BLOCK_N, NUM_WARPS, WORKER_REGS = 64, 64, 4, 232  # warps of the default partition
SHAPE = (576, 512)  # (D, v_dim): absorbed MLA, the only shape this kernel takes
LOG2E = 1.4426950408889634

if gluon is not None:

    @triton.constexpr_function
    def _wgmma_layout(n):
        # one warpgroup's accumulator of 64 x n (wgmma m64 n k16), as both partitions lay theirs out
        return gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, n, 16])

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
        WORKER_REGS: gl.constexpr,
    ):  # fmt: skip
        hg, split, b = gl.program_id(0), gl.program_id(1), gl.program_id(2)
        dtype: gl.constexpr = k_desc.dtype
        VEC: gl.constexpr = gl.SwizzledSharedLayout(vec=1, per_phase=1, max_phase=1, order=[0])
        smem = (
            gl.allocate_shared_memory(dtype, [BLOCK_H, DV], q_desc.layout),
            gl.allocate_shared_memory(dtype, [BLOCK_H, DR], qpe_desc.layout),
            gl.allocate_shared_memory(dtype, [2, BLOCK_N, DV], k_desc.layout),  # K latent (= V) per stage
            gl.allocate_shared_memory(dtype, [2, BLOCK_N, DR], pe_desc.layout),  # K rope per stage, then P
            gl.allocate_shared_memory(gl.float32, [2, BLOCK_H], VEC),  # softmax rescale per stage
            gl.allocate_shared_memory(gl.float32, [2, BLOCK_H], VEC),  # final row max, row sum
        )
        # 0, 1: stage full (TMA bytes); 2, 3: stage free (both warpgroups); 4, 5: P ready; 6: row sums final; 7: Q
        bars = gl.allocate_shared_memory(gl.int64, [8, 1], mbarrier.MBarrierLayout())
        for i in gl.static_range(8):
            mbarrier.init(bars.index(i), count=2 if i == 2 or i == 3 else 1)
        row0 = b * H + hg * BLOCK_H  # rows past H belong to the next query (or are zero-filled): not stored
        mbarrier.expect(bars.index(7), q_desc.block_type.nbytes + qpe_desc.block_type.nbytes)
        _tma_load(q_desc, [row0, 0], bars.index(7), smem[0])
        _tma_load(qpe_desc, [row0, DV], bars.index(7), smem[1])

        e0 = split * entries_per_split
        t0 = e0 * bs
        n_t = (gl.minimum(e0 + entries_per_split, M) * bs - t0) // BLOCK_N  # tiles of this split
        table_row = table_ptr + b.to(gl.int64) * stride_tb
        # both stages start free: the first two tiles are loaded now, beside Q, rather than once the worker starts (the
        # first K tile then came ~2.5 us after the program's start); a table entry is a TMA row, int32
        first = gl.load(table_row + (t0 // bs) * stride_te, mask=n_t > 0, other=-1).to(gl.int32)
        second = gl.load(table_row + ((t0 + BLOCK_N) // bs) * stride_te, mask=n_t > 1, other=-1).to(gl.int32)
        if n_t > 0:
            _load_tile(k_desc, pe_desc, smem[2].index(0), smem[3].index(0), bars.index(0), first, t0, bs, k_desc.shape[0], DV)
        if n_t > 1:
            _load_tile(k_desc, pe_desc, smem[2].index(1), smem[3].index(1), bars.index(1), second, t0 + BLOCK_N, bs,
                       k_desc.shape[0], DV)  # fmt: skip
        tiles = (table_row, stride_te, t0, bs, n_t)
        o_base = o_ptr + split.to(gl.int64) * stride_os + b.to(gl.int64) * stride_ob
        lse_base = lse_ptr + split.to(gl.int64) * stride_ls + b.to(gl.int64) * stride_lb
        out = (o_base, hg * BLOCK_H, H, stride_oh)
        gl.warp_specialize(
            [(_scores_and_left, (smem, bars, tiles, qk_scale, out, lse_base, BLOCK_N)),
             (_loads_and_right, (k_desc, pe_desc, smem, bars, tiles, out, BLOCK_N))],
            [4], [WORKER_REGS],
        )  # fmt: skip

    @gluon.jit
    def _scores_and_left(smem, bars, tiles, qk_scale, out, lse_base, BLOCK_N: gl.constexpr):
        # warpgroup 0: per tile, scores + softmax, P and the rescale into shared memory, O[:, :DV/2] += P V
        q_smem, qpe_smem, k_smem, pe_smem, alpha_smem, stat_smem = smem
        table_row, stride_te, t0, bs, n_t = tiles
        BLOCK_H: gl.constexpr = q_smem.shape[0]
        S_L: gl.constexpr = _wgmma_layout(BLOCK_N)
        O_L: gl.constexpr = _wgmma_layout(q_smem.shape[1] // 2)
        m_i = gl.full([BLOCK_H], float("-inf"), gl.float32, gl.SliceLayout(1, S_L))
        l_i = gl.zeros([BLOCK_H], gl.float32, gl.SliceLayout(1, S_L))
        acc = gl.zeros([BLOCK_H, q_smem.shape[1] // 2], gl.float32, O_L)
        mbarrier.wait(bars.index(7), 0)
        for j in range(n_t):
            s = j % 2
            page = gl.load(table_row + ((t0 + j * BLOCK_N) // bs) * stride_te).to(gl.int32)
            mbarrier.wait(bars.index(s), (j // 2) & 1)
            k_s, p_s = k_smem.index(s), pe_smem.index(s)
            zero = gl.zeros([BLOCK_H, BLOCK_N], gl.float32, S_L)
            sc = warpgroup_mma(q_smem, k_s.permute((1, 0)), zero, use_acc=False, is_async=True)
            sc = warpgroup_mma(qpe_smem, p_s.permute((1, 0)), sc, is_async=True)
            sc = warpgroup_mma_wait(num_outstanding=0, deps=(sc,))
            sc = gl.where(page >= 0, sc * qk_scale, float("-inf"))
            m_new = gl.maximum(m_i, gl.max(sc, axis=1))
            m_safe = gl.where(m_new == float("-inf"), 0.0, m_new)  # no key yet: keep exp2 finite
            alpha = gl.exp2(m_i - m_safe)
            p = gl.exp2(sc - m_safe[:, None])  # 0 where masked
            l_i = l_i * alpha + gl.sum(p, axis=1)
            m_i = m_new
            _barrier()  # every warp's score dot is done with the rope slot P overwrites
            p_s.store(p.to(p_s.dtype))
            alpha_smem.index(s).store(alpha)
            fence_async_shared()
            _barrier()
            mbarrier.arrive(bars.index(4 + s))  # P ready
            acc = acc * gl.convert_layout(alpha, gl.SliceLayout(1, O_L))[:, None]
            acc = warpgroup_mma(p_s, k_s.slice(0, acc.shape[1], dim=1), acc)
            _barrier()
            mbarrier.arrive(bars.index(2 + s))  # stage free, as far as warpgroup 0 goes
        stat_smem.index(0).store(m_i)
        stat_smem.index(1).store(l_i)
        _barrier()
        mbarrier.arrive(bars.index(6))
        empty = l_i == 0.0
        lse = gl.where(empty, float("-inf"), (m_i + gl.log2(gl.where(empty, 1.0, l_i))) * 0.6931471805599453)
        hs = out[1] + gl.arange(0, BLOCK_H, gl.SliceLayout(1, S_L))
        gl.store(lse_base + hs, lse, mask=hs < out[2])
        _write_half(acc, gl.convert_layout(l_i, gl.SliceLayout(1, O_L)), out, 0, q_smem)  # Q: its scores are done

    @gluon.jit
    def _loads_and_right(k_desc, pe_desc, smem, bars, tiles, out, BLOCK_N: gl.constexpr):
        # warpgroup 1: the TMA loads of every tile, and O[:, DV/2:] += P V once warpgroup 0 has P ready
        _, _, k_smem, pe_smem, alpha_smem, stat_smem = smem
        table_row, stride_te, t0, bs, n_t = tiles
        HALF: gl.constexpr = k_smem.shape[2] // 2
        O_L: gl.constexpr = _wgmma_layout(HALF)
        BLOCK_H: gl.constexpr = alpha_smem.shape[1]
        rows_total = k_desc.shape[0]
        acc = gl.zeros([BLOCK_H, HALF], gl.float32, O_L)
        for j in range(n_t):  # tiles 0 and 1 were issued before the split (`_sparse_mla_hopper`)
            s = j % 2
            mbarrier.wait(bars.index(4 + s), (j // 2) & 1)  # P ready
            acc = acc * alpha_smem.index(s).load(gl.SliceLayout(1, O_L))[:, None]
            acc = warpgroup_mma(pe_smem.index(s), k_smem.index(s).slice(HALF, HALF, dim=1), acc)
            _barrier()
            mbarrier.arrive(bars.index(2 + s))  # stage free, as far as warpgroup 1 goes
            if j + 2 < n_t:  # refill it with tile j + 2 once warpgroup 0 has released it too
                mbarrier.wait(bars.index(2 + s), (j // 2) & 1)
                t = t0 + (j + 2) * BLOCK_N
                page = gl.load(table_row + (t // bs) * stride_te).to(gl.int32)  # TMA rows are int32
                _load_tile(k_desc, pe_desc, k_smem.index(s), pe_smem.index(s), bars.index(s), page, t, bs, rows_total,
                           2 * HALF)  # fmt: skip
        mbarrier.wait(bars.index(6), 0)  # warpgroup 0's final row sums
        _write_half(acc, stat_smem.index(1).load(gl.SliceLayout(1, O_L)), out, HALF, k_smem.index(0))  # every tile done

    @gluon.jit
    def _write_half(acc, l_i, out, col0, buf):
        # o[h, col0 : col0 + HALF] = acc / l for heads h0 + [0, BLOCK_H) below H (an empty row: 0), staged through
        # `buf` (shared memory no warpgroup reads any more) so that each warp stores whole rows in 16-byte vectors: the
        # accumulator's own layout stores 4 bytes a thread, 8 rows x 16 bytes a warp, and took 3-6 us per program
        o_base, h0, H, stride_oh = out
        BLOCK_H: gl.constexpr = acc.shape[0]
        HALF: gl.constexpr = acc.shape[1]
        dtype: gl.constexpr = o_base.dtype.element_ty
        STAGE: gl.constexpr = gl.SwizzledSharedLayout(vec=8, per_phase=1, max_phase=8, order=[1, 0])
        ROWS: gl.constexpr = gl.BlockedLayout([1, 8], [1, 32], [gl.num_warps(), 1], [1, 0])
        if _NEW_REINTERPRET:
            part = buf.reinterpret(dtype, [BLOCK_H, HALF], STAGE)
        else:
            part = buf._reinterpret(dtype, [BLOCK_H, HALF], STAGE)
        part.store((acc / gl.where(l_i == 0.0, 1.0, l_i)[:, None]).to(dtype))
        _barrier()
        h = h0 + gl.arange(0, BLOCK_H, gl.SliceLayout(1, ROWS))
        dv = col0 + gl.arange(0, HALF, gl.SliceLayout(0, ROWS))
        gl.store(o_base + h[:, None] * stride_oh + dv[None, :], part.load(ROWS), mask=h[:, None] < H)

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
        BLOCK_H=BLOCK_H, BLOCK_N=BLOCK_N, DV=v_dim, DR=D - v_dim, num_warps=NUM_WARPS, WORKER_REGS=WORKER_REGS,
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
    consts = dict(BLOCK_H=BLOCK_H, BLOCK_N=BLOCK_N, DV=SHAPE[1], DR=SHAPE[0] - SHAPE[1], num_warps=NUM_WARPS,
                  WORKER_REGS=WORKER_REGS)
    types = {"table_ptr": "*i32", "o_ptr": "*bf16", "lse_ptr": "*fp32", "qk_scale": "fp32"}
    fn = _sparse_mla_hopper
    sig = {n: mangle_type(descs[n]) if n in descs else types.get(n, "constexpr" if n in consts else "i32") for n in fn.arg_names}
    src = GluonASTSource(fn, sig, constexprs={(fn.arg_names.index(k),): v for k, v in consts.items()})
    return triton_compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": NUM_WARPS})

