"""gather_store / scatter_store (Triton) copy pages bit for bit like index_select / index assignment."""

import pytest
import torch

pytest.importorskip("triton", exc_type=ImportError)  # missing or broken install: skip

from qroute.errors import QrouteError  # noqa: E402
from qroute.kernels import gather_store, gather_store_reference, scatter_store, scatter_store_reference  # noqa: E402
from qroute.kernels import gather as gather_module  # noqa: E402
from qroute.runtime.store import BlockStore  # noqa: E402
from tests.kernels.helpers import DEVICE, gen, gpu, needs_compiled_cuda, poisoned  # noqa: E402


def random_store(seed, L, N, bs, D, dtype=torch.bfloat16, device=DEVICE):
    """kv [L, N, bs, D] in BlockStore's layout, random (never zeros)."""
    return torch.randn(L, N, bs, D, generator=gen(seed)).to(dtype).to(device)


@pytest.mark.parametrize("L, N, bs, D", [(3, 10, 16, 576), (1, 5, 64, 40), (2, 7, 1, 576), (4, 3, 16, 17)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_gather_matches_index_select_bitwise(L, N, bs, D, dtype):
    kv = random_store(L * N, L, N, bs, D, dtype)
    slots = torch.randperm(N, generator=gen(1))[: max(1, N - 2)].tolist()  # send order != slot order
    out = poisoned((L, len(slots) * bs, D), dtype)
    got = gather_store(kv, slots, out=out, backend="triton")
    assert got is out and torch.equal(got, gather_store_reference(kv, slots))


@pytest.mark.parametrize("slots", [[4], [0, 6, 2], [], list(range(7))], ids=["one", "three", "none", "all"])
def test_scatter_writes_only_the_given_slots(slots):
    kv = random_store(2, 3, 7, 16, 48)
    buf = torch.randn(3, len(slots) * 16, 48, generator=gen(3)).bfloat16().to(DEVICE)
    expected = kv.clone()
    scatter_store_reference(expected, slots, buf)
    assert scatter_store(kv, torch.tensor(slots, dtype=torch.int32), buf, backend="triton") is kv
    assert torch.equal(kv, expected)


def byte_store(seed, L, N, bs, D, dtype, shift=0):
    """kv [L, N, bs, D] of random bytes (every bit pattern: NaN payloads, -0), `shift` elements into its storage."""
    raw = torch.randint(0, 256, ((L * N * bs * D + shift) * dtype.itemsize,), dtype=torch.uint8, generator=gen(seed))
    return raw.to(DEVICE).view(dtype)[shift:].view(L, N, bs, D)


def bits(t):
    return t.view(torch.uint8)  # bit-for-bit comparison, NaNs included


# (dtype, bs, D, shift): the runtime's pages, fp8, odd page sizes, a store starting mid-storage
PAGES = [
    (torch.bfloat16, 16, 576, 0),
    (torch.float8_e4m3fn, 1, 576, 0),
    (torch.bfloat16, 1, 36, 0),
    (torch.float32, 3, 17, 0),
    (torch.bfloat16, 3, 17, 0),
    (torch.float8_e5m2, 1, 17, 0),
    (torch.bfloat16, 16, 8, 1),  # starts 2 bytes into its storage
]


@pytest.mark.parametrize("dtype, bs, D, shift", PAGES, ids=lambda v: str(v).removeprefix("torch."))
@pytest.mark.parametrize("block", [None, 64], ids=["default", "64-element programs"])
def test_any_bytes_round_trip_exactly(dtype, bs, D, shift, block, monkeypatch):
    if block is not None:  # many programs per page, the last one partial
        monkeypatch.setattr(gather_module, "BLOCK", block)
    L, N, slots = 3, 5, [3, 0, 4]
    kv = byte_store(bs * D, L, N, bs, D, dtype, shift)
    out = poisoned((L, len(slots) * bs, D), dtype)
    got = gather_store(kv, slots, out=out, backend="triton")
    assert torch.equal(bits(got), bits(gather_store_reference(kv, slots)))
    dst = byte_store(D, L, N, bs, D, dtype, shift)
    expected = dst.clone()
    scatter_store_reference(expected, slots, got)
    scatter_store(dst, slots, got, backend="triton")
    assert torch.equal(bits(dst), bits(expected))


def test_round_trip_between_two_stores():
    src, dst = random_store(4, 2, 9, 16, 576), random_store(5, 2, 6, 16, 576)
    sent = gather_store(src, [8, 1, 5], backend="triton")
    scatter_store(dst, [0, 4, 3], sent, backend="triton")
    assert torch.equal(dst[:, [0, 4, 3]], src[:, [8, 1, 5]])


def test_matches_block_store_gather():
    store = BlockStore([10, 11, 12, 40, 41], layers=2, block_size=4, width=24, dtype=torch.float32)
    store.kv.copy_(torch.randn(store.kv.shape, generator=gen(6)))
    blocks = [41, 10, 12]
    kv = store.kv.to(DEVICE)
    assert torch.equal(gather_store(kv, store.slots(blocks), backend="triton").cpu(), store.gather(blocks))


def test_empty_selection_gives_empty_buffer():
    kv = random_store(7, 2, 4, 16, 8)
    assert gather_store(kv, [], backend="triton").shape == (2, 0, 8)


@pytest.mark.parametrize(
    "slots, message",
    [([2, 5, 2], "duplicate block slot 2"), ([1, 9], "block slot 9 out of range"), ([-1], "block slot -1 out of range")],
)
def test_bad_slots_are_rejected_on_both_sides(slots, message):
    kv = random_store(8, 2, 9, 16, 8)
    with pytest.raises(QrouteError, match=message):
        gather_store(kv, slots)
    buf = torch.zeros(2, len(slots) * 16, 8, dtype=kv.dtype, device=DEVICE)
    with pytest.raises(QrouteError, match=f"scatter_store: {message}"):
        scatter_store(kv, slots, buf)


def test_bad_layouts_are_one_line_errors():
    kv = random_store(9, 2, 6, 16, 8)
    with pytest.raises(QrouteError, match="kv shape"):
        gather_store(kv[0], [1])
    with pytest.raises(QrouteError, match="page contiguous"):
        gather_store(kv.transpose(2, 3), [1])
    with pytest.raises(QrouteError, match="buf shape"):
        scatter_store(kv, [1, 2], torch.zeros(2, 16, 8, dtype=kv.dtype, device=DEVICE))
    with pytest.raises(QrouteError, match="buf dtype"):
        scatter_store(kv, [1], torch.zeros(2, 16, 8, device=DEVICE))
    with pytest.raises(QrouteError, match="1-D integer"):
        gather_store(kv, torch.tensor([1.0]))


@gpu
@needs_compiled_cuda
def test_gpu_gather_scatter_at_realistic_shape():
    kv = random_store(0, 61, 512, 64, 576, device="cuda")  # ~2.3 GB of store
    slots = torch.randperm(512, generator=gen(0))[:32]
    buf = gather_store(kv, slots)
    assert torch.equal(buf, gather_store_reference(kv, slots))
    dst = torch.zeros_like(kv)
    scatter_store(dst, slots, buf)
    assert torch.equal(dst[:, slots.cuda()], kv[:, slots.cuda()])
