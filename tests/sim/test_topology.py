"""Topology, placement and configuration checks: every bad value is one QrouteError before any event."""

import dataclasses

import pytest

from qroute.cost import load_profile
from qroute.cost.profile import PathSpec
from qroute.errors import QrouteError
from qroute.sim import Layout, SimConfig, SimRequest, SimWorkload, Topology, place, prepare, simulate
from qroute.sim.engine import Engine

PROFILE = load_profile("published-h100")


def test_paths_between_instances():
    t = Topology(nodes=2, gpus_per_node=4)
    assert t.instances == 8
    assert t.path(0, 3) == "nvlink4" and t.path(3, 4) == "ibgda"
    assert t.path_names() == ("nvlink4", "ibgda")
    assert Topology(nodes=3, gpus_per_node=1, intra=None).path_names() == ("ibgda",)
    assert Topology(nodes=1, gpus_per_node=2, inter=None).path_names() == ("nvlink4",)


def test_roles_round_robin_over_nodes():
    requesters, holders = Topology(nodes=2, gpus_per_node=4).roles(3)
    assert requesters == (0, 1, 4)
    assert holders == (2, 3, 5, 6, 7)


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        ({"holder_capacity": 0}, "holder capacity=0"),
        ({"holder_capacity": -2}, "holder capacity=-2"),
        ({"nodes": 0}, "nodes=0"),
        ({"gpus_per_node": -1}, "gpus per node=-1"),
        ({"nodes": 2, "gpus_per_node": 1, "inter": None}, "no path between instances 0 and 1"),
        ({"nodes": 1, "gpus_per_node": 2, "intra": None}, "no path between instances 0 and 1"),
    ],
)
def test_bad_topologies_name_the_value(kwargs, needle):
    with pytest.raises(QrouteError, match=needle):
        Topology(**kwargs)


def test_unknown_path_is_named():
    with pytest.raises(QrouteError, match="unknown inter-node path 'infiniband'.*ibgda"):
        Topology(nodes=2, gpus_per_node=2, inter="infiniband").check(PROFILE)
    Topology(nodes=1, gpus_per_node=2, inter="unused").check(PROFILE)  # a path the topology never uses


def test_negative_path_rate_in_a_what_if_profile():
    bad = dataclasses.replace(PROFILE, paths={**PROFILE.paths, "ibgda": PathSpec(16e-6, -25e9)})
    with pytest.raises(QrouteError, match="beta_Bps=-25000000000.0"):
        Topology(nodes=2, gpus_per_node=1, intra=None).check(bad)


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        ({"requesters": 8}, "requesters=8 on 8 instances"),
        ({"requesters": 0}, "requesters=0"),
        ({"replicas": 6}, "replicas=6"),
        ({"placement": "striped"}, "placement 'striped'"),
        ({"profile": "no-such-profile"}, "unknown profile"),
        ({"topology": Topology(nodes=2, gpus_per_node=4, intra="pcie9")}, "unknown intra-node path 'pcie9'"),
        ({"model": "no-such-model"}, "no-such-model"),
    ],
)
def test_bad_configs_fail_before_any_event(kwargs, needle, monkeypatch):
    monkeypatch.setattr(Engine, "run", lambda *a, **k: pytest.fail("simulation started"))
    with pytest.raises(QrouteError, match=needle):
        simulate(SimConfig(**kwargs))


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        ({"policies": ("always-route", "teleport")}, "unknown policy 'teleport'"),
        ({"concurrency": 0}, "concurrency=0"),
        ({"base_step_s": -1.0}, "base step seconds=-1.0"),
        ({"requests": ()}, "without a layout"),
    ],
)
def test_bad_config_values(kwargs, needle):
    with pytest.raises(QrouteError, match=needle):
        SimConfig(**kwargs)


def test_requests_outside_the_layout():
    layout = Layout.uniform(2, 4, 16)
    bad = SimRequest(agent=0, arrival_s=0.0, chunk=1, blocks=(3, 4), steps=2, offset=8)
    with pytest.raises(QrouteError, match=r"blocks \[3, 4\]: expected ids of chunk 1, in \[4, 8\)"):
        prepare(SimConfig(requests=(bad,), layout=layout))


def test_bad_workload_values():
    with pytest.raises(QrouteError, match="persistence=1.5"):
        SimWorkload(persistence=1.5)
    with pytest.raises(QrouteError, match="topk blocks=40"):
        SimWorkload(sparse=True, topk_blocks=40, chunk_blocks=32)


def test_placement_contiguous_hashed_and_replicas():
    layout = Layout.uniform(4, 8, 16)
    copies = place(layout, (10, 11), "contiguous")
    assert [c[0] for c in copies] == [10] * 16 + [11] * 16  # whole chunks, balanced
    copies = place(layout, (10, 11, 12), "hashed", replicas=1)
    assert all(len(c) == 2 and c[0] != c[1] for c in copies)
    assert place(layout, (10, 11, 12), "hashed", replicas=1) == copies  # stable
