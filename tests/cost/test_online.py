"""Online rescaling: learns measured / predicted per primitive and phase group from finished requests only."""

import pytest

from qroute.cost.online import OnlineScale, online_predictions
from qroute.errors import QrouteError

PRED = {"network_s": 1e-3, "compute_s": 2e-3, "merge_s": 1e-4}


def test_before_any_request_the_profile_stands_and_a_steady_slowdown_is_learned():
    scale = OnlineScale(window=4)
    assert scale.predict("route", PRED)["total_s"] == pytest.approx(3.1e-3)
    for _ in range(6):
        scale.observe("route", PRED, {"network_s": 1.2e-3, "compute_s": 2e-3, "merge_s": 1.5e-4})
    out = scale.predict("route", PRED)
    assert out["network_s"] == pytest.approx(1.2e-3) and out["compute_s"] == pytest.approx(2e-3)
    assert out["merge_s"] == pytest.approx(1.5e-4) and out["total_s"] == pytest.approx(3.35e-3)
    assert scale.predict("fetch", PRED)["total_s"] == pytest.approx(3.1e-3)  # per primitive


def test_a_stall_does_not_move_the_median_and_old_requests_leave_the_window():
    scale = OnlineScale(window=3)
    for network in (1e-3, 9e-3, 1e-3):  # one 9x stall among three
        scale.observe("fetch", PRED, {**PRED, "network_s": network})
    assert scale.factor("fetch", "network_s") == pytest.approx(1.0)
    for _ in range(3):
        scale.observe("fetch", PRED, {**PRED, "network_s": 1.5e-3})
    assert scale.factor("fetch", "network_s") == pytest.approx(1.5)
    scale.observe("fetch", PRED, {**PRED, "network_s": 1.0})
    scale.observe("fetch", PRED, {**PRED, "network_s": 1.0})
    assert scale.factor("fetch", "network_s") == 2.0  # clipped


def test_replay_predicts_each_request_from_the_ones_before_it_only():
    measured = [{**PRED, "compute_s": 2e-3 * k} for k in (1.0, 1.1, 1.2, 1.3)]
    out = online_predictions([("local", PRED, m) for m in measured], window=2)
    assert [o["compute_s"] / 2e-3 for o in out] == pytest.approx([1.0, 1.0, 1.05, 1.15])


@pytest.mark.parametrize("kwargs, match", [(dict(window=0), "online window"), (dict(clip=(1.2, 2.0)), "online clip")])
def test_bad_settings_are_one_line_errors(kwargs, match):
    with pytest.raises(QrouteError, match=match):
        OnlineScale(**kwargs)
