"""Profiles: the schema is enforced on load, errors are one line, nothing is pickled."""

from dataclasses import replace
import json

import numpy as np
import pytest

from qroute.cost import profile as prof
from qroute.errors import QrouteError


def published() -> dict:
    return prof.load("published-h100").to_dict()


def test_published_h100_is_labelled_and_carries_the_paper_figures():
    p = prof.load("published-h100")
    assert p.provenance == "published"
    assert "NOT measured" in p.description
    assert p.path("ibgda").alpha_s == pytest.approx(16e-6) and p.path("ibgda").beta_Bps == pytest.approx(25e9)
    assert 18e9 <= p.path("nvlink4").beta_Bps <= 25e9
    assert 27 * p.compute.splice.per_layer_s == pytest.approx(3e-3, rel=1e-3)  # ~3 ms over V2-Lite's layers
    g = p.compute.gather
    assert g.per_holder_layer_s + 2048 * g.per_entry_s == pytest.approx(1.3e-3, rel=1e-3)
    assert 7 * g.per_holder_layer_s + 2048 * g.per_entry_s == pytest.approx(3.9e-3, rel=1e-3)
    assert p.compute.merge.fixed_s <= 25e-6
    for section in ("attention", "merge", "reprefill"):
        assert "assumed" in getattr(p.compute, section).source


def test_roundtrip_through_a_file(tmp_path):
    p = prof.load("published-h100")
    p.save(tmp_path / "p.json")
    assert prof.load(tmp_path / "p.json") == p


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d["paths"]["ibgda"].update(alpha_s=-1e-6), r"paths\.ibgda\.alpha_s: -1e-06 is less than the minimum"),
        (lambda d: d["paths"]["ibgda"].update(beta_Bps=0), r"paths\.ibgda\.beta_Bps: 0 is less than or equal"),
        (lambda d: d["compute"].pop("splice"), "'splice' is a required property"),
        (lambda d: d.update(schema="qroute.profile/0"), "expected 'qroute.profile/14'"),
        (lambda d: d.update(default_paths=["pcie9"]), "default path 'pcie9' is not in paths"),
        (lambda d: d["compute"]["merge"].update(fixed_s="2us"), r"compute\.merge\.fixed_s: '2us' is not of type 'number'"),
        (lambda d: d.update(provenance="guessed"), "provenance: 'guessed' is not one of"),
        (lambda d: d.update(paths={}), "paths"),
    ],
)
def test_schema_violations_are_one_line_errors(tmp_path, mutate, message):
    d = published()
    mutate(d)
    f = tmp_path / "bad.json"
    f.write_text(json.dumps(d))
    with pytest.raises(QrouteError, match=message) as info:
        prof.load(f)
    assert "\n" not in str(info.value)


def test_not_json_and_unknown_name(tmp_path):
    f = tmp_path / "bad.json"
    f.write_text("{")
    with pytest.raises(QrouteError, match="not valid JSON"):
        prof.load(f)
    with pytest.raises(QrouteError, match="unknown profile 'h200-dreams'"):
        prof.load("h200-dreams")


def test_a_gzipped_profile_file_loads_and_a_broken_one_is_one_line(tmp_path):
    import gzip

    f = tmp_path / "p.json.gz"
    f.write_bytes(gzip.compress(json.dumps(published()).encode()))
    assert prof.load(f) == prof.load("published-h100")
    bad = tmp_path / "bad.json.gz"
    bad.write_bytes(b"not gzip")
    with pytest.raises(QrouteError, match="'.*bad.json.gz' is not readable JSON") as info:
        prof.load(bad)
    assert "\n" not in str(info.value)


def test_unknown_path_lists_known_ones():
    with pytest.raises(QrouteError, match="unknown path 'roce'.*ibgda"):
        prof.load("published-h100").path("roce")


def test_measured_extras_roundtrip_and_old_profiles_read_and_write_unchanged(tmp_path):
    from dataclasses import replace

    p = prof.load("published-h100")
    assert "after_route_s" not in published()["compute"]["merge"]
    assert "reply_s" not in published()["compute"]["gather"]
    assert "fetch_per_holder_s" not in published()["paths"]["ibgda"]
    ibgda = replace(p.path("ibgda"), fetch_per_holder_s=2e-4, fetch_beta_Bps=7e9, fetch_bytes_serial=0.4,
                    cold_idle=((0.01, 5e-5), (0.3, 5e-4)), chunk_bytes=1 << 20, chunk_s=2e-4)  # fmt: skip
    assert not {"cold_idle", "fetch_bytes_serial", "chunk_bytes", "chunk_s"} & set(published()["paths"]["ibgda"])
    assert ibgda.fetch_time(3 << 20) - ibgda.fetch_time(2 << 20) == pytest.approx((1 << 20) / 7e9 + 2e-4)  # a third chunk
    assert ibgda.fetch_time(1 << 20) - ibgda.fetch_time(1 << 19) == pytest.approx((1 << 19) / 7e9)  # still one
    assert "fetch_beta_Bps" not in published()["paths"]["ibgda"]
    merge = replace(p.compute.merge, after_route_s=3e-5, per_moved_token_s=5e-8, first_step_excess=0.09)
    assert not {"per_moved_token_s", "first_step_excess"} & set(published()["compute"]["merge"])
    gather = replace(p.compute.gather, reply_s=8e-5)
    assert "parallel_excess" not in published()["compute"]["attention"]
    attention = replace(p.compute.attention, first_step_excess=0.09, parallel_excess=0.11,
                        first_step_idle=((0.01, 0.08), (0.1, 0.3)), group_s=p.compute.attention.fixed_s / 2)  # fmt: skip
    assert not {"first_step_idle", "group_s"} & set(published()["compute"]["attention"])
    assert p.compute.attention.group_s is None and p.compute.attention.batched_s(3e-3, 3) == 3e-3
    assert attention.batched_s(3e-3, 3) == pytest.approx(3e-3 - attention.fixed_s)  # 2 further requests, half off each
    q = replace(p, paths={**p.paths, "ibgda": ibgda}, compute=replace(p.compute, merge=merge, gather=gather, attention=attention))
    q.save(tmp_path / "q.json")
    assert prof.load(tmp_path / "q.json") == q
    assert q.path("ibgda").fetch_extra_s == 2e-4 and p.path("ibgda").fetch_extra_s == p.path("ibgda").per_holder_s


def test_overlapped_counts_each_other_holder_up_to_the_cap_and_a_cap_round_trips():
    from qroute.cost.profile import PathSpec
    from qroute.cost.terms import overlapped

    assert overlapped([3.0, 1.0, 2.0], 0.5) == pytest.approx(4.5)
    assert overlapped([3.0, 1.0, 2.0], 0.5, cap=1.5) == pytest.approx(3.0 + 0.5 * (1.0 + 1.5))
    assert overlapped([3.0, 3.0], 1.0, cap=0.5) == pytest.approx(3.5)  # a tie: one of them is the longest
    spec = PathSpec(1e-4, 1e9, holder_serial=0.8, serial_cap_s=1.2e-3)
    assert PathSpec.from_dict(spec.to_dict()) == spec and "serial_cap_s" not in PathSpec(1e-4, 1e9).to_dict()



def test_stalls_are_the_median_of_a_poisson_count_and_round_trip():
    from qroute.cost.profile import PathSpec

    spec = PathSpec(1e-4, 1e9, stall_rate=10.0, stall_s=2e-3, stall_rate_multi=50.0, stall_s_multi=4e-3)
    assert PathSpec.from_dict(spec.to_dict()) == spec
    assert "stall_rate" not in PathSpec(1e-4, 1e9).to_dict()  # older profiles write unchanged
    # one holder, 10 ms exchanges at 10 stalls/s: mean 0.4 (median 0), 0.8 (1), 3 (3) over 4, 8 and 30 exchanges
    assert [spec.stalls_s(n, 1, 1e-2) for n in (4, 8, 30)] == pytest.approx([0.0, 2e-3, 6e-3])
    assert spec.stalls_s(8, 2, 1e-2) == pytest.approx(4 * 4e-3)  # several holders: their rate (mean 4) and size
    got = spec.stalls_s(np.array([4, 8, 8]), np.array([1, 1, 2]), 1e-2)  # batched planning: numpy arrays
    assert got == pytest.approx([0.0, 2e-3, 16e-3])
    assert PathSpec(1e-4, 1e9).stalls_s(1000, 2, 1.0) == 0.0


def test_stalls_counted_per_exchange_do_not_grow_with_the_exchanges_seconds():
    """profile/10: 10% of one-holder exchanges stall, 50% of several-holder ones; a request pays the median count
    whatever its exchanges last, and it round trips. profile/13: a per-second rate beside the share adds to it."""
    from qroute.cost.profile import PathSpec
    from qroute.cost.terms import mean_stall_s

    spec = PathSpec(1e-4, 1e9, stall_s=2e-3, stall_s_multi=4e-3, stall_per_exchange=0.1,
                    stall_per_exchange_multi=0.5)  # fmt: skip
    growing = replace(spec, stall_rate_multi=50.0)
    assert PathSpec.from_dict(growing.to_dict()) == growing
    assert [growing.stalls_per_exchange(True, t) for t in (0.0, 1e-2)] == pytest.approx([0.5, 1.0])
    assert growing.stalls_per_exchange(False, 1e-2) == pytest.approx(0.1)
    assert PathSpec.from_dict(spec.to_dict()) == spec and "stall_per_exchange" not in PathSpec(1e-4, 1e9).to_dict()
    for seconds in (1e-4, 1e-2):  # mean 0.4 (median 0), 0.8 (1), 3 (3) over 4, 8 and 30 exchanges
        assert [spec.stalls_s(n, 1, seconds) for n in (4, 8, 30)] == pytest.approx([0.0, 2e-3, 6e-3])
        assert spec.stalls_s(8, 2, seconds) == pytest.approx(4 * 4e-3)
        assert mean_stall_s([spec], 1, seconds) == pytest.approx(0.1 * 2e-3)
        assert mean_stall_s([spec], 3, seconds) == pytest.approx(0.5 * 4e-3)
    got = spec.stalls_s(np.array([4, 8, 8]), np.array([1, 1, 2]), np.array([1e-3, 1e-3, 1e-2]))
    assert got == pytest.approx([0.0, 2e-3, 16e-3])
