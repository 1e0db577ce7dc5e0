"""paths.opened: a profile plans only on the paths this cluster opened."""

from dataclasses import replace

import pytest

from qroute.cost import load_profile
from qroute.cost.profile import PathSpec
from qroute.runtime import paths


@pytest.fixture
def registry():
    saved, default = dict(paths._GROUPS), list(paths._DEFAULT)
    paths._GROUPS.clear()
    yield paths._GROUPS
    paths._GROUPS.clear()
    paths._GROUPS.update(saved)
    paths._DEFAULT[:] = default


def _profile(*names):
    base = load_profile("published-h100")
    specs = {n: PathSpec(alpha_s=1e-5 * (i + 1), beta_Bps=1e9) for i, n in enumerate(names)}
    return replace(base, paths=specs, default_paths=tuple(names))


def test_without_paths_only_the_world_groups_path(registry):
    profile = _profile("gloo-loopback", "shm")
    assert paths.opened(profile).default_paths == ("gloo-loopback",)


def test_opened_paths_kept_in_the_profiles_order(registry):
    paths.register("gloo-loopback", None)
    paths.register("shm", object())
    assert paths.opened(_profile("shm", "veth", "gloo-loopback")).default_paths == ("shm", "gloo-loopback")


def test_a_profile_of_another_cluster_is_left_as_it_is(registry):
    profile = _profile("nvlink", "pcie")
    assert paths.opened(profile) is profile
