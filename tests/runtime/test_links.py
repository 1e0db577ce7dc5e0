"""The order a requester waits for its holders' replies in: one order for every requester."""

from qroute.runtime.links import reply_order


def test_replies_are_awaited_by_holder_rank_then_path_whatever_order_they_were_asked_in():
    assert reply_order({5: [1], 2: [3], 3: [0]}) == [2, 3, 5]  # fetch: holders asked in their sessions' order
    keys = [(3, None), (2, "shm"), (3, "gloo-loopback"), (2, None)]  # route: (holder, path); None: the world group
    assert reply_order(keys) == [(2, None), (2, "shm"), (3, None), (3, "gloo-loopback")]
    assert reply_order(list(reversed(keys))) == reply_order(keys)
