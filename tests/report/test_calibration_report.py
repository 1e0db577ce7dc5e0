"""The calibration fit table: each path's constants, its per-holder terms and the self-checks, as fitted."""

import io

from rich.console import Console

from qroute.report.calibration import fit_table


def _results(spread: float) -> dict:
    path = {"alpha_s": 5e-4, "beta_Bps": 2e9, "cold_s": 6e-5, "per_holder_s": 1.7e-4, "fetch_offset_s": 1.5e-4,
            "holder_serial": 0.25, "bytes_serial": 0.4}  # fmt: skip
    fit = {"median_ape": 0.063, "p90_ape": 0.09}
    profile = {"name": "measured-test", "paths": {"shm": path}, "compute": {},
               "fits": {"path": {"shm": [fit]}, "pingpong": {"shm": {"alpha_s": 2e-4, "beta_Bps": 3e9, **fit}}}}  # fmt: skip
    sp = {"repeats": 3, "alpha_rel_spread": 0.1, "beta_rel_spread": 0.2, "time_rel_spread": 0.05, "speed_rel_spread": spread}
    return {"profile": profile, "spread": {"shm": sp}}


def _text(results: dict) -> str:
    out = io.StringIO()
    Console(file=out, width=200).print(fit_table(results))
    return out.getvalue()


def test_the_table_names_both_serial_fractions_of_a_parallel_exchange():
    text = _text(_results(0.05))
    assert "170 us (+25% of their compute, 40% of their bytes)" in text
    assert "unsteady" not in text
    capped = _results(0.05)
    capped["profile"]["paths"]["shm"]["serial_cap_s"] = 1.2e-3
    assert "(+25% of their compute up to 1.2 ms each, 40% of their bytes)" in _text(capped)


def test_a_calibration_whose_speed_moved_is_flagged_unsteady():
    assert "60.0% (unsteady)" in _text(_results(0.6))


def test_the_repeat_spread_row_adds_the_spread_at_one_speed_where_measured():
    assert "predicted exchange 5.0%" in _text(_results(0.05)) and "at one speed" not in _text(_results(0.05))
    results = _results(0.05)
    results["spread"]["shm"]["time_rel_spread_at_speed"] = 0.021
    assert "predicted exchange 5.0% (2.1% at one speed)" in _text(results)


def test_the_repeat_spread_row_says_where_each_repeat_served_a_share_of_the_shapes():
    assert "shm repeat spread (3 runs)" in _text(_results(0.05))
    results = _results(0.05)
    results["spread"]["shm"]["shares"] = True
    assert "shm repeat spread (3 runs, each on a share of the shapes)" in _text(results)


def test_a_fetch_rate_of_its_own_gets_a_row():
    assert "fetch rate" not in _text(_results(0.05))
    results = _results(0.05)
    results["profile"]["paths"]["shm"]["fetch_beta_Bps"] = 1.25e9
    assert "shm fetch rate" in _text(results) and "1.25 GB/s" in _text(results)
    results["profile"]["paths"]["shm"].update(chunk_bytes=1 << 20, chunk_s=2.76e-4)
    assert "1.25 GB/s, 276 us per 1.05 MB chunk beyond the first" in _text(results)


def test_the_wake_up_after_idle_and_the_first_step_after_idle_get_their_points():
    results = _results(0.05)
    assert "after idle" not in _text(results)
    results["profile"]["paths"]["shm"]["cold_idle"] = [[0.011, 6.6e-5], [0.31, 5.7e-4]]
    results["profile"]["compute"]["attention"] = {"fixed_s": 2e-4, "first_step_idle": [[0.011, 0.1], [0.31, 0.33]]}
    results["profile"]["fits"]["attention"] = {"median_ape": 0.02, "max_ape": 0.05}
    text = _text(results)
    assert "shm wake-up after idle" in text and "11 ms: 66 us, 310 ms: 570 us" in text
    assert "first step after idle 11 ms: +10%, 310 ms: +33%" in text


def test_phase_text_names_the_start_the_training_and_its_largest_parts():
    from qroute.report.calibration import phase_text

    phases = {"launch": 2.6, "holders_ready": 2.4, "sweeps": 1.7, "warm_up": 1.8, "speed_probes": 1.0, "route": 1.3,
              "fetch": 2.2, "batches": 2.5, "pairs": 2.0, "fits": 0.2, "stop": 0.1}  # fmt: skip
    assert phase_text(phases) == ("seconds: launch 2.6, holders' prefill 2.4, sweeps 1.7, training 10.8 (batches 2.5, "
                                  "fetch 2.2, pairs 2.0), fits 0.2, stop 0.1")  # fmt: skip
    assert phase_text({"sweeps": 1.0, "route": 2.0, "fits": 0.1}) == "seconds: sweeps 1.0, training 2.0 (route 2.0), fits 0.1"
    assert phase_text({}) == ""
