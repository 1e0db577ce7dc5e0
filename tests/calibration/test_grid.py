"""The training grid's corpus for `calibrate --quick`."""

import pytest

from qroute.calibration import grid
from qroute.runtime.world import WorldSpec
from qroute.workload.corpus import CorpusSpec


@pytest.mark.parametrize("holders", [1, 2, 3, 4])
def test_the_quick_corpus_holds_the_wide_fetch_on_a_holder(holders):
    """`calibrate --quick`'s corpus (2,048 tokens a holder: half the full one with 2 holders) still holds a wide
    fetch's blocks on one holder, whatever the holders."""
    from qroute.calibration.shapes import wide_request
    from qroute.runtime.world import build_world

    tokens = grid.quick_corpus_tokens(holders)
    assert tokens == 2048 * holders
    world = build_world(WorldSpec(corpus=CorpusSpec(max_tokens=tokens, chunk_blocks=32)), list(range(1, holders + 1)))
    wide = wide_request(world, grid.WIDE_BLOCKS * max(grid.QUICK_CHUNK_BLOCKS), seed=1)
    assert wide is not None and len(wide.blocks) == grid.WIDE_BLOCKS * max(grid.QUICK_CHUNK_BLOCKS)


@pytest.mark.parametrize("blocks", [grid.QUICK_CHUNK_BLOCKS, grid.TRAIN_CHUNK_BLOCKS])
@pytest.mark.parametrize("paths", [1, 2, 3])
def test_paths_share_out_the_grid_each_share_spanning_every_size(blocks, paths):
    """Split, the paths' shares are disjoint and make up the grid, and each holds every step-token count (its route
    exchanges' sizes) and every chunk size (its fetches'); unsplit, every path serves every shape."""
    shapes = grid.train_shapes(blocks)
    names = [f"p{i}" for i in range(paths)]
    shares = grid.path_shapes(shapes, names, split=True)
    assert list(shares) == names and sorted(s for share in shares.values() for s in share) == sorted(shapes)
    for share in shares.values():
        assert {k for k, _ in share} == set(grid.TRAIN_STEP_TOKENS) and {n for _, n in share} == set(blocks)
        assert len(share) == pytest.approx(len(shapes) / paths, abs=1)
    assert all(share == shapes for share in grid.path_shapes(shapes, names, split=False).values())


@pytest.mark.parametrize("paths", [2, 3])
def test_rotating_shares_give_every_path_every_shape_over_the_repeats(paths):
    """The default calibration's shares rotate (`Samples.rotate`): each repeat's shares make up the grid, a share
    moves on to the next path each repeat, and over `paths` repeats every path has served every shape once; without
    `rotate` (`--quick`'s one repeat) the shares stay put."""
    shapes, names = grid.train_shapes(), [f"p{i}" for i in range(paths)]
    repeats = [grid.FULL.shares(shapes, names, r) for r in range(paths)]
    for shares in repeats:
        assert sorted(s for share in shares.values() for s in share) == sorted(shapes)
    for r in range(1, paths):
        assert all(repeats[r][names[(p + 1) % paths]] == repeats[r - 1][names[p]] for p in range(paths))
    for name in names:
        assert sorted(s for shares in repeats for s in shares[name]) == sorted(shapes)
    assert grid.QUICK.shares(shapes, names, 1) == grid.QUICK.shares(shapes, names, 0)
    one = grid.FULL.shares(shapes, ["p0"], 2)  # one path serves every shape every repeat
    assert one == {"p0": shapes}


def test_more_paths_than_sizes_each_serve_every_shape():
    """A share could not span every size with more paths than chunk sizes: every path then serves every shape."""
    shapes = grid.train_shapes((2, 14))
    shares = grid.path_shapes(shapes, ["a", "b", "c"], split=True)
    assert all(share == shapes for share in shares.values())


@pytest.mark.parametrize("first, rewarm, probes, prefills", [(True, False, 8, 1), (False, True, 8, 1), (False, False, 1, 0)])
def test_a_later_pass_without_rewarm_only_opens_its_path(monkeypatch, first, rewarm, probes, prefills):
    """The first pass of a repeat warms up (probes until steady, one re-prefill of the largest chunk); a later one
    whose samples do not `rewarm` runs one probe, opening its path."""
    seen = {"probe": 0, "local": 0}

    def probe(executor, world, reps=1):
        seen["probe"] += 1
        return {"route": 1.0 + seen["probe"]}  # never steady: its 8 rounds stop the warm-up

    monkeypatch.setattr("qroute.calibration.shapes.speed_probe", probe)
    monkeypatch.setattr(grid, "shaped_request", lambda *a, **k: "request")
    monkeypatch.setattr(grid, "serve", lambda executor, request, primitive: seen.__setitem__(primitive, seen[primitive] + 1))
    samples = grid.Samples(warm_budget_s=60.0, rewarm=rewarm)
    grid.warm_pass(None, None, samples, first, largest=30, seed=0)
    assert (seen["probe"], seen["local"]) == (probes, prefills)
