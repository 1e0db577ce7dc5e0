"""Route, fetch and local executed for real across processes equal the single-instance oracle."""

import pytest

from qroute.demo import run_demo

pytestmark = pytest.mark.timeout(180)


def assert_exact(results):
    for run in results["runs"]:
        assert run["exact"], (run["mode"], run["max_rel_err"])
        assert run["max_rel_err"] <= 1e-4


def test_every_primitive_is_exact_and_really_moves_data(tiny):
    results = run_demo(tiny())
    assert_exact(results)
    assert [(r["batch"], r["mode"]) for r in results["runs"]] == [  # batch by batch, the modes' order rotating
        (0, "route"), (0, "fetch"), (0, "local"), (0, "predicate"), (1, "fetch"), (1, "local"), (1, "predicate"), (1, "route")]
    by_mode = {m: s for m, s in results["summary"].items()}
    assert set(by_mode["route"]["choices"]) == {"route"}
    assert set(by_mode["fetch"]["choices"]) == {"fetch"}
    assert set(by_mode["local"]["choices"]) == {"local"}
    holders = {h["rank"]: h for h in results["holders"]}
    assert set(holders) == {1, 2}
    assert sum(h["route_messages"] for h in holders.values()) > 0
    assert sum(h["fetched_blocks"] for h in holders.values()) > 0
    route = [r for r in results["runs"] if r["mode"] == "route"]
    assert all(r["measured"]["messages"] > 0 and r["measured"]["bytes"] > 0 for r in route)
    # per holder and layer, measured beside predicted
    trace = [t for r in route for t in r["trace"] if t["kind"] == "route"]
    assert {t["layer"] for t in trace} == {0, 1} and all(t["rtt_s"] > t["holder_compute_s"] > 0 for t in trace)
    for r in route:  # each route record names its sessions (how calibration reads stalls in clusters): one per request
        assert len({x for t in r["trace"] if t["kind"] == "route" for x in t["sessions"]}) == len(r["requests"])
    assert_idle_times(route)
    assert all(r["predicted"]["total_s"] > 0 and r["plans"][0]["holders"] for r in route)
    local = [r for r in results["runs"] if r["mode"] == "local"]
    assert all(r["measured"]["messages"] == 0 for r in local)  # local moves nothing
    assert_adapt_records(results)
    assert_requester_first_steps(results)


def assert_requester_first_steps(results):
    """Each session's attention over moved KV and its merges say whether they ran in its first decode step: one of
    each per layer and session there (what calibration reads the requester's first-step excess from)."""
    later = 0
    for run in results["runs"]:
        for kind in ("moved", "merge"):
            records = [t for t in run["trace"] if t["kind"] == kind]
            if run["mode"] == "route" and kind == "moved":
                assert records == []
                continue
            assert all(isinstance(t["first_step"], bool) for t in records)
            for layer in (0, 1):
                assert sum(t["first_step"] for t in records if t["layer"] == layer) == len(run["requests"])
            later += sum(not t["first_step"] for t in records)
    assert later > 0


def assert_idle_times(runs):
    """Each route record says how long its holder had been idle since its last reply here: never negative, never
    longer than since this requester's previous message to it, known from the second exchange with it on."""
    for run in runs:
        last: dict[int, float] = {}
        for t in sorted((t for t in run["trace"] if t["kind"] == "route"), key=lambda t: t["t_post"]):
            if t["holder"] in last:
                assert 0.0 <= t["idle_s"] <= t["t_post"] - last[t["holder"]]
            if t["first_step"] and t["layer"] == 0 and t["planned_idle_s"] is not None:  # planned before it was posted
                assert 0.0 <= t["planned_idle_s"] <= t["idle_s"]
            last[t["holder"]] = t["t_post"]
        assert any(t.get("idle_s") is not None for t in run["trace"] if t["kind"] == "route")


def assert_adapt_records(results):
    """Every request that only fetched leaves one `adapt` record: its compute in `open`, at least its splices and the
    holders' gathers it lists (what calibration prices per reply beyond them); no other request leaves one."""
    for run in results["runs"]:
        adapt = [t for t in run["trace"] if t["kind"] == "adapt"]
        if run["mode"] != "fetch":
            assert adapt == []
            continue
        fetches = [t for t in run["trace"] if t["kind"] == "fetch"]
        splices = [t for t in run["trace"] if t["kind"] == "splice"]
        assert len(adapt) == len(run["requests"]) and sum(a["fetched"] for a in adapt) == len(fetches)
        assert sum(a["splice_s"] for a in adapt) == pytest.approx(sum(t["seconds"] for t in splices))
        assert sum(a["gather_s"] for a in adapt) == pytest.approx(sum(t["holder_compute_s"] for t in fetches if t["scattered"]))
        assert all(a["seconds"] >= a["splice_s"] + a["gather_s"] > 0 for a in adapt)


def test_hashed_placement_with_replicas_and_sparse_selection(tiny):
    results = run_demo(tiny(placement="hashed", replicas=1, sparse=True, modes=("route", "fetch", "local")))
    assert_exact(results)
    assert_adapt_records(results)
    assert any(t["kind"] == "fetch" and t["scattered"] for r in results["runs"] for t in r["trace"])
    assert all(h["blocks"] > 0 for h in results["holders"])


def test_world_of_one_attends_everything_in_place(tiny):
    results = run_demo(tiny(instances=1, modes=("predicate", "route")))
    assert_exact(results)
    assert results["holders"] == []
    assert all(r["measured"]["messages"] == 0 for r in results["runs"])


def test_holders_serve_several_requesters(tiny):
    results = run_demo(tiny(instances=3, requesters=2, modes=("route", "fetch")))
    assert_exact(results)
    (holder,) = results["holders"]
    assert holder["requesters_served"] == [0, 1]
    (other,) = results["other_requesters"]
    assert all(m["exact"] for m in other["summary"].values())


def test_calibrated_profile_and_bfloat16(tiny):
    results = run_demo(tiny(instances=2, profile="auto", dtype="bfloat16", modes=("predicate", "fetch")))
    assert results["profile"]["provenance"] == "measured"
    assert results["profile"]["paths"]["gloo-loopback"]["alpha_s"] > 0
    for run in results["runs"]:
        assert run["exact"], run["max_rel_err"]


def test_the_quick_calibration_is_calibrate_quick_in_the_cluster(tiny):
    """`--profile auto` serves the quick training grid, scaled to the world's 8-block chunks, through the cluster's
    own holders and fits the profile to the trace: asking two holders at once included (`per_holder_s`); the route
    exchanges' medians as the path's knots."""
    results = run_demo(tiny(instances=3, profile="auto", modes=("route",)))
    profile = results["profile"]
    assert "in situ" in profile["description"]
    path = profile["paths"]["gloo-loopback"]
    assert path["per_holder_s"] is not None and path["holder_serial"] is not None
    fit = profile["fits"]["path"]["gloo-loopback"][-1]
    sizes = sorted({p[0] for p, o in zip(fit["points"], fit["origins"]) if o == "route"})
    assert [k[0] for k in path["knots"]] == sizes and len(sizes) >= 3
    assert "parallel_compute" in profile["fits"] and "merge_after_route" in profile["fits"]
    assert all(run["exact"] for run in results["runs"])


def test_the_quick_calibration_falls_back_to_its_loops_under_hashed_placement(tiny):
    """No chunk's first blocks sit on one holder: each constant is timed in a loop of its own, asking two holders at
    once over a small and a large selection, fitted as calibration fits its parallel exchanges."""
    results = run_demo(tiny(instances=3, profile="auto", placement="hashed", modes=("route",)))
    report = results["profile"]["fits"]["parallel"]["gloo-loopback"]
    assert [s[0] for s in report["shapes"]] == [2, 2] and [s[2] for s in report["shapes"]] == [15, 15]
    assert [t for _, t in report["shapes"][0][1]] == [4 * 8, 4 * 8] and [t for _, t in report["shapes"][1][1]] == [32 * 8] * 2
    assert "in situ" not in results["profile"]["description"]
    assert all(run["exact"] for run in results["runs"])


def test_several_tokens_per_step_route_as_one_group(tiny):
    """rows = tokens x heads: 3 new tokens per step (the greedy one and 2 drafts), causal among themselves."""
    results = run_demo(tiny(step_tokens=3, placement="hashed", modes=("route", "fetch", "local", "predicate")))
    assert_exact(results)
    route = [t for r in results["runs"] if r["mode"] == "route" for t in r["trace"] if t["kind"] == "route"]
    assert route and all(t["rows"] % (3 * 4) == 0 for t in route)  # 3 tokens x 4 heads per session, sessions batched
    plans = [p for r in results["runs"] if r["mode"] == "predicate" for p in r["plans"] if p]
    assert all(p["holders"] for p in plans)


def test_exact_framing_serves_several_requesters_exactly(tiny):
    """The NCCL protocol (header then exact payload, named senders, a holder polling one receive per requester),
    exercised over gloo on the CPU: what runs GPU to GPU under `backend="nccl"`."""
    results = run_demo(tiny(instances=3, requesters=2, frames="exact", modes=("route", "fetch", "local")))
    assert_exact(results)
    (holder,) = results["holders"]
    assert holder["requesters_served"] == [0, 1] and holder["route_messages"] > 0 and holder["fetched_blocks"] > 0
    (other,) = results["other_requesters"]
    assert all(m["exact"] for m in other["summary"].values())


def test_online_planning_predicts_each_batch_from_the_ones_before_it(tiny):
    results = run_demo(tiny(modes=("route", "fetch"), requests=6, online=True))
    assert_exact(results)
    groups = ("network_s", "compute_s", "merge_s")
    for mode in ("route", "fetch"):
        runs = [r for r in results["runs"] if r["mode"] == mode]
        assert len(runs) == 3
        first, second = runs[0], runs[1]
        assert first["predicted"]["total_s"] == pytest.approx(first["predicted_static"]["total_s"])  # nothing learned
        for g in groups:  # one batch learned: the static prediction times its measured / predicted, clipped
            if first["predicted_static"][g] > 0 and first["measured"][g] > 0:
                ratio = min(2.0, max(0.5, first["measured"][g] / first["predicted_static"][g]))
                assert second["predicted"][g] == pytest.approx(second["predicted_static"][g] * ratio, rel=1e-9)
