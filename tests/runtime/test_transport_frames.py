"""Message framing without processes: headers and payload packing round-trip."""

import pytest
import torch

from qroute.errors import QrouteError
from qroute.runtime import transport


def test_header_and_payload_roundtrip():
    tensors = [torch.randn(2, 3).to(torch.bfloat16), torch.arange(5), torch.ones(3, dtype=torch.bool), torch.zeros(0, 7)]
    header, nbytes = transport.encode_header(9, [1, -2, 3], tensors)
    kind, meta, specs, n = transport.decode_header(header)
    assert (kind, meta, n) == (9, [1, -2, 3], nbytes)
    assert header[transport.INLINE_WORD] == 1
    buf = transport.pack(tensors, nbytes)
    for a, b in zip(tensors, transport.unpack(buf, specs)):
        assert a.dtype == b.dtype and torch.equal(a, b)


def test_large_messages_are_not_inline():
    big = torch.zeros(transport.EAGER, dtype=torch.uint8)
    header, _ = transport.encode_header(1, [], [big])
    assert header[transport.INLINE_WORD] == 0


def test_exact_first_frames_hold_what_fits_and_their_size_is_checked():
    small, big = [torch.arange(10)], [torch.zeros(transport.FIRST, dtype=torch.uint8)]
    try:
        transport.set_exact(True)
        assert transport.encode_header(1, [], small)[0][transport.INLINE_WORD] == 1
        assert transport.encode_header(1, [], big)[0][transport.INLINE_WORD] == 0
        (frame, tag), = transport._frames(1, [3], small)[0]
        assert frame.numel() == transport.FIRST and tag == transport.HEADER
        message = transport._payload(frame, 0, None)
        assert message.meta == [3] and torch.equal(message.tensors[0], small[0])
        assert [f.numel() for f, _ in transport._frames(1, [], big)[0]] == [transport.FIRST, transport.FIRST]
        transport.set_exact(True, first=transport.HEADER_BYTES)
        assert [f.numel() for f, _ in transport._frames(1, [], small)[0]] == [transport.HEADER_BYTES, 80]
        for bad in (transport.HEADER_BYTES - 8, transport.FIRST + 1, 4096.0):
            with pytest.raises(QrouteError, match=f"first frame of {bad!r} bytes: expected a multiple of 8, at least 768"):
                transport.set_exact(True, first=bad)
    finally:
        transport.set_exact(False)


def test_limits_and_bad_headers():
    with pytest.raises(QrouteError, match="expected <= 24 / 8"):
        transport.encode_header(1, [], [torch.zeros(1)] * 9)
    with pytest.raises(QrouteError, match="bad message header magic"):
        transport.decode_header(torch.zeros(transport.HEADER_LEN, dtype=torch.int64))
