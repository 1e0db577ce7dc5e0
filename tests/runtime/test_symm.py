"""The symmetric-memory path (one-sided writes between GPUs, headers through host memory).

On any machine: the pure pieces (which tensors travel by GPU and how they are put back in order, the chunking, the
payload size) and the refusals. On 2+ GPUs (the device machine): messages of every size, dtype and device round
trip exactly (chunked past the slot, CPU tensors arriving on the CPU), and route / fetch / local over the path match
the single-instance reference.
"""

import pytest
import torch

from qroute.cost.model import PRIMITIVES
from qroute.errors import QrouteError
from qroute.runtime import paths, symm, transport
from qroute.runtime.launcher import ClusterSpec, launch
from tests.runtime.primitives import primitives_over

gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
two_gpus = pytest.mark.skipif(gpus < 2, reason="needs 2 CUDA devices (one per instance)")


def test_join_puts_the_tensors_back_in_message_order():
    a, b, c, d = (torch.full((i + 1,), i) for i in range(4))
    assert symm.split([a, b]) == (0, [a, b], [])  # CPU tensors only: nothing by GPU
    for mask, host, device, want in [(0b0101, [b, d], [a, c], [a, b, c, d]), (0b1110, [a], [b, c, d], [a, b, c, d]),
                                     (0b1, [], [a], [a]), (0, [], [], [])]:  # fmt: skip
        got = symm.join(mask, host, device)
        assert len(got) == len(want) and all(x is y for x, y in zip(got, want))


@pytest.mark.parametrize("total, slot, want", [(0, 8, []), (8, 8, [(0, 8)]), (9, 8, [(0, 8), (8, 1)]),
                                               (24, 8, [(0, 8), (8, 8), (16, 8)])])  # fmt: skip
def test_chunks_cover_the_payload_once(total, slot, want):
    assert symm.chunks(total, slot) == want


def test_payload_bytes_is_what_the_transport_lays_out():
    g = torch.Generator().manual_seed(0)
    for shapes in [[(3,)], [(5, 7), (1,), (0, 4)], [(2, 3, 576)]]:
        tensors = [torch.randn(*s, generator=g).to(dt) for s, dt in zip(shapes, (torch.bfloat16, torch.float32, torch.int64))]
        _, nbytes = transport.encode_header(1, [], tensors)
        assert symm.payload_bytes([(t.dtype, tuple(t.shape)) for t in tensors]) == nbytes
        assert transport.pack(tensors, nbytes).numel() == nbytes


def test_only_makes_one_path_carry_every_message(monkeypatch):
    monkeypatch.setattr(paths, "_GROUPS", {})
    monkeypatch.setattr(paths, "_DEFAULT", [None])
    paths.register(paths.LOOPBACK, None)
    assert paths.world_carries_messages() and paths.group("elsewhere") is None and paths.group(None) is None
    mine = object()
    paths.only(symm.NAME, mine)
    assert paths.names() == [symm.NAME] and not paths.world_carries_messages()
    assert paths.group(symm.NAME) is mine and paths.group(paths.NCCL) is mine and paths.group(None) is mine
    assert paths.groups() == [mine]


@pytest.mark.parametrize("bad", [dict(backend="gloo"), dict(backend="nccl", world_size=1)])
def test_symmetric_memory_only_between_nccl_instances(bad):
    with pytest.raises(QrouteError, match="the symmetric-memory path with backend .*: expected backend nccl and 2 or more"):
        ClusterSpec(**{"world_size": 2, "symm": True, **bad})


def test_the_cli_refuses_symm_under_gloo(capsys):
    from qroute.cli import main

    assert main(["validate", "--symm", "--quiet"]) != 0
    assert "symmetric-memory path" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- on 2+ GPUs

SIZES = (0, 8, 1000, 1 << 20, symm.SLOT, 2 * symm.SLOT + 123)  # one chunk to three


def echo(instance):
    """Rank 0 sends messages of GPU and CPU tensors of every size over the path and checks the echo."""
    group = paths.group(symm.NAME)
    assert paths.names() == [symm.NAME] and paths.group(None) is group and paths.group(paths.NCCL) is group
    assert not paths.world_carries_messages()
    if instance.rank != 0:
        while (msg := transport.recv(None, group)).kind != 9:
            transport.send(msg.src, 8, msg.meta, msg.tensors, group)
        return "served"
    g = torch.Generator().manual_seed(0)
    device = transport.device()
    for size in SIZES:
        sent = [torch.randint(0, 255, (size,), dtype=torch.uint8, generator=g).to(device),
                torch.arange(7), torch.randn(3, 5, generator=g).to(torch.bfloat16).to(device),
                torch.randn(4, 6, generator=g)[:, ::2].to(device),  # strided: copied as it lies
                torch.rand(2, 2, generator=g) > 0.5]  # fmt: skip
        for _ in range(2):  # the second reuses the slot after FREE
            assert transport.isend(1, 7, [size, -1], sent, group) == []
            back = transport.recv(1, group)
            assert back.kind == 8 and back.src == 1 and back.meta == [size, -1]
            assert [t.device.type for t in back.tensors] == [t.device.type for t in sent]
            assert all(a.dtype == b.dtype and a.shape == b.shape and torch.equal(a.cpu(), b.cpu())
                       for a, b in zip(sent, back.tensors))  # fmt: skip
    transport.send(1, 9, [], [], group)
    return "ok"


@two_gpus
@pytest.mark.gpu
@pytest.mark.timeout(300)
def test_messages_of_every_size_and_device_round_trip_over_symmetric_memory():
    assert launch(ClusterSpec(world_size=2, backend="nccl", symm=True, timeout_s=60.0), echo) == ["ok", "served"]


@two_gpus
@pytest.mark.gpu
@pytest.mark.timeout(300)
def test_route_fetch_and_local_over_symmetric_memory_match_the_reference():
    errors, _, via = launch(ClusterSpec(world_size=min(gpus, 3), backend="nccl", symm=True, timeout_s=60.0),
                            primitives_over)[0]  # on the plan's path, which maps to the only one  # fmt: skip
    assert set(errors) == set(PRIMITIVES) and max(errors.values()) < 1e-5, errors
    assert via == {"SymmGroup"}  # every exchange went over the symmetric memory
