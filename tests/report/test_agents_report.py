"""`qroute bench-agents` reporting: the policies table, the result files and the --json summary, on fake results."""

import copy
import csv
import datetime as dt
import json

from rich.console import Console

from qroute.report.agents import policies_table, summary_json, write_agents

PNG = b"\x89PNG\r\n\x1a\n"


def policy(throughput=1200.0, cache=True, hit_series=True, util=True, steps=50):
    p = {
        "throughput": throughput, "p50_s": 0.0042, "p99_s": 0.031, "mean_s": 0.006, "wall_s": 12.5,
        "tokens": int(throughput * 12.5), "requests": 40,
        "exact": True, "max_rel_err": 3.1e-3, "checked": 8,
        "bytes": {"route": 3_200_000, "fetch": 1_500_000_000},
        "choices": {"route": 120, "fetch": 30, "local": 10, "cache": 55},
        "cache": {"hits": 55, "misses": 30, "hit_rate": 55 / 85, "evictions": 4, "capacity_blocks": 256} if cache else None,
        "holder_utilisation": {"1": 0.42, "2": 0.77} if util else {},
        "step_latencies_s": [0.001 * (1 + i % 17) for i in range(steps)],
        "hit_rate_over_time": [[0.5 * i, min(0.9, 0.1 * i)] for i in range(10)] if hit_series else [],
    }  # fmt: skip
    return p


def results(policies):
    return {
        "config": {"model": "tiny-mla", "instances": 3}, "machine": {"host": "testhost", "gpus": 0},
        "created": "2025-01-01T00:00:00",
        "workload": {"requests": 40, "agents": 8,
                     "skew": {"top1_share": 0.21, "top10_share": 0.63, "reuse": {"median": 3.0, "p90": 9.0, "first_time": 0.3}}},
        "policies": policies,
    }  # fmt: skip


def three():
    return results({
        "predicate": policy(1500.0),
        "always-route": policy(900.0, cache=False),
        "always-fetch": policy(600.0, hit_series=False),
    })  # fmt: skip


def render(table, width=240) -> str:
    console = Console(record=True, width=width)
    console.print(table)
    return console.export_text()


def test_table_one_policy():
    text = render(policies_table(results({"predicate": policy()})))
    assert "40 requests from 8 agents" in text and "63%" in text and "testhost" in text
    assert "predicate *" in text and "1.00x" in text
    assert "1,200" in text and "4.2 ms" in text and "31 ms" in text
    assert "3.2 MB" in text and "1.5 GB" in text and "65%" in text and "77%" in text and "yes (3.1e-03)" in text


def test_table_three_policies():
    text = render(policies_table(three()))
    rows = {line.split()[1]: line for line in text.splitlines() if line.startswith("│ ") and "always" in line}
    assert "predicate *" in text and "1.00x" in text
    assert "0.60x" in rows["always-route"] and "0.40x" in rows["always-fetch"]
    assert "65%" not in rows["always-route"]  # no cache: hit rate shown as "-"
    assert "65%" in rows["always-fetch"]  # a cache without a series still has a hit rate
    narrow = render(policies_table(three()), width=120)  # what print_tables uses when piped
    assert "always-route" in narrow and "always-fetch" in narrow and "yes (3.1e-03)" in narrow


def test_files_written_and_readable(tmp_path):
    res = three()
    files = write_agents(res, tmp_path / "out", tag="t")
    stem = f"agents-t-{dt.date.today():%Y-%m-%d}"
    assert [f.name for f in files] == [f"{stem}{end}" for end in (".json", ".csv", "-latency-cdf.png", "-bytes.png", "-hit-rate.png")]
    assert all(f.parent == tmp_path / "out" for f in files)
    data = next(f for f in files if f.suffix == ".json")
    assert json.loads(data.read_text()) == res  # step latencies kept
    with next(f for f in files if f.suffix == ".csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["policy"] for r in rows] == list(res["policies"])
    assert {"throughput", "p99_s", "exact", "bytes_route", "bytes_fetch", "choices_cache", "cache_hit_rate",
            "holder_utilisation_max"} <= set(rows[0])  # fmt: skip
    assert float(rows[0]["throughput"]) == 1500.0 and rows[1]["cache_hit_rate"] == "" and rows[0]["bytes_fetch"] == "1500000000"
    for png in (f for f in files if f.suffix == ".png"):
        assert png.stat().st_size > 1000 and png.read_bytes()[:8] == PNG


def test_hit_rate_file_skipped_without_series(tmp_path):
    res = results({"always-route": policy(cache=False, hit_series=False), "lru": policy(hit_series=False)})
    files = write_agents(res, tmp_path, tag="t")
    assert len(files) == 4 and not any(f.name.endswith("-hit-rate.png") for f in files)
    assert not list(tmp_path.glob("*hit-rate*"))


def test_summary_json_drops_lists():
    res = three()
    before = copy.deepcopy(res)
    out = summary_json(res)
    assert res == before  # the results are not touched
    assert set(out) == {"policies", "workload"} and out["workload"] == res["workload"]
    for name, p in out["policies"].items():
        assert "step_latencies_s" not in p and "hit_rate_over_time" not in p
        for key in ("throughput", "p50_s", "p99_s", "mean_s", "exact", "max_rel_err", "bytes", "choices", "cache",
                    "holder_utilisation"):  # fmt: skip
            assert p[key] == res["policies"][name][key]
    json.dumps(out)


def test_zero_throughput_and_missing_utilisation(tmp_path):
    stalled = policy(0.0, util=False, steps=0, hit_series=False)
    stalled["bytes"] = {"route": 0, "fetch": 0}  # nothing moved: no log axis to draw on
    bare = policy(util=False)
    del bare["holder_utilisation"]
    text = render(policies_table(results({"stalled": stalled, "bare": bare})))
    assert "0.00x" in text and "1.00x" in text
    files = write_agents(results({"stalled": stalled, "bare": bare}), tmp_path, tag="t")
    assert len(files) == 5
    # every policy stalled: no best, no crash
    text = render(policies_table(results({"stalled": stalled})))
    assert "stalled *" not in text and "-" in text
    files = write_agents(results({"stalled": stalled}), tmp_path / "all-stalled", tag="t")
    assert [f.name.split("-", 5)[-1] for f in files if f.suffix == ".png"] == ["latency-cdf.png", "bytes.png"]
    assert all(f.stat().st_size > 0 for f in files)
    assert summary_json(results({"stalled": stalled}))["policies"]["stalled"]["throughput"] == 0.0
