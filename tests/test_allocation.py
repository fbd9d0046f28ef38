"""Where a run's switched prompts went (aria.experiment.allocation), against a written-out loop."""

import numpy as np
import pytest

from aria.experiment.allocation import switched_by_group

FRACTIONS = [[1.0, 0.0], [0.25, 0.75], [0.0, 1.0]]  # 3 regions x 2 regimes (a, b)
LOGGED = {2: [0.5, 0.5, 0.0], 4: [0.0, 0.2, 0.8], 6: [0.1, 0.1, 0.8]}  # step -> region probabilities


def records(switched=(0.5, 0.25, 0.5, 0.75, 0.0, 0.5), batch=8, logged=LOGGED) -> list[dict]:
    data = {"event": "data", "regions": 3, "sizes": [5, 5, 5],
            "groups": {"regime": {"names": ["a", "b"], "fractions": FRACTIONS}}}
    steps = []
    for step, fraction in enumerate(switched, start=1):
        line = {"step": step, "loss": 1.0, "batch": batch, "switched_fraction": fraction}
        if step in logged:
            line["probabilities"] = logged[step]
        steps.append(line)
    return [data, *steps, {"event": "end", "step": len(switched)}]


def reference(recs: list[dict]) -> dict:
    """The rule spelled out: each step's switched samples go by the first allocation logged at or after it."""
    logged = {r["step"]: r["probabilities"] for r in recs if "probabilities" in r}
    totals = {"a": 0.0, "b": 0.0}
    samples = 0.0
    for r in recs:
        if "loss" not in r:
            continue
        later = [s for s in sorted(logged) if s >= r["step"]]
        p = logged[later[0] if later else max(logged)]
        n = r["batch"] * r["switched_fraction"]
        samples += n
        for region in range(3):
            for g, name in enumerate(("a", "b")):
                totals[name] += n * p[region] * FRACTIONS[region][g]
    return {"samples": samples, "regime": {k: v / samples for k, v in totals.items()}}


def test_shares_follow_the_allocation_in_force_at_each_step():
    recs = records()
    got, want = switched_by_group(recs), reference(recs)
    assert got["samples"] == pytest.approx(want["samples"]) == 8 * 2.5
    assert got["regime"] == pytest.approx(want["regime"])
    assert sum(got["regime"].values()) == pytest.approx(1.0)


def test_steps_after_the_last_log_take_the_last_allocation_and_a_resumed_step_counts_once():
    recs = records(switched=(0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5), logged={2: LOGGED[2], 4: LOGGED[4]})
    assert switched_by_group(recs)["regime"] == pytest.approx(reference(recs)["regime"])
    resumed = recs[:5] + [dict(recs[4])] + recs[5:]  # step 4 logged twice (a resume re-ran it): the last line wins
    once, twice = switched_by_group(recs), switched_by_group(resumed)
    assert twice["samples"] == once["samples"] and twice["regime"] == pytest.approx(once["regime"])


def test_runs_without_an_allocation_or_a_switch_have_none():
    plain = [{k: v for k, v in r.items() if k != "probabilities"} for r in records()]
    assert switched_by_group(plain) is None  # none: logs no allocation
    assert switched_by_group(records(switched=(0.0,) * 6)) is None
    assert switched_by_group(records()[1:]) is None  # no data line
    other_world = records()
    other_world[0] = {**other_world[0], "groups": {"regime": {"names": ["a"], "fractions": [[1.0]] * 2}}}
    assert set(switched_by_group(other_world)) == {"samples"}  # a grouping of another region count is skipped
    assert np.isfinite(switched_by_group(records())["samples"])


def test_group_mix_is_each_logged_allocation_spread_over_the_regimes():
    from aria.experiment.allocation import group_mix

    steps, names, mix = group_mix(records())
    assert list(steps) == sorted(LOGGED) and names == ["a", "b"]
    for row, step in zip(mix, steps):
        p = LOGGED[int(step)]
        want = [sum(p[k] * FRACTIONS[k][g] for k in range(3)) for g in range(2)]
        assert row == pytest.approx(want)
    assert group_mix(records(), grouping="family") is None
    assert group_mix([{k: v for k, v in r.items() if k != "probabilities"} for r in records()]) is None


def test_switched_mix_plot_shows_every_line_whole(tmp_path, monkeypatch):
    """Panels share the y axis: the limit must hold the highest share of any panel (a limit set on the first
    panel before the others were drawn once cut the unseen panel's lines off at the seen panel's top)."""
    from aria.experiment import report

    figures = []
    monkeypatch.setattr(report, "_save", lambda fig, path, layout=True: figures.append(fig) or path)
    steps = np.array([50, 100, 150])
    regimes = ["seen", "under", "unseen", "compositional"]
    low = np.tile([0.45, 0.15, 0.35, 0.05], (3, 1))
    high = np.tile([0.10, 0.10, 0.78, 0.02], (3, 1))  # most of it in the third panel
    report.plot_switched_mix({"rc": (steps, regimes, low), "invfreq": (steps, regimes, high)}, tmp_path / "m.png")
    tops = [ax.get_ylim() for ax in figures[0].axes]
    report._plt().close(figures[0])
    assert all(bottom == 0 and top >= 0.78 for bottom, top in tops)
