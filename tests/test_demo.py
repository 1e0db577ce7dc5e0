"""The demo's pure parts: the order each batch is served in."""

from qroute.demo import mode_order

MODES = ("predicate", "route", "fetch", "local")


def test_each_batch_starts_one_mode_later_and_serves_every_mode():
    orders = [mode_order(MODES, i) for i in range(5)]
    assert orders[0] == MODES and orders[1] == ("route", "fetch", "local", "predicate")
    assert orders[4] == MODES  # the rotation comes round
    assert all(sorted(o) == sorted(MODES) for o in orders)
    assert [o[0] for o in orders[:4]] == list(MODES)  # every mode goes first once in four batches


def test_one_mode_or_none():
    assert mode_order(("route",), 3) == ("route",)
    assert mode_order((), 2) == ()
