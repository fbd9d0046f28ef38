"""The per-region record of observed discrepancy between log lines: raw and timestep-normalised."""

import numpy as np
import pytest

from aria.strategies.base import Feedback
from aria.training.metrics import RegionWindow


def test_normalising_by_timestep_bin_takes_out_the_timestep_mix():
    """Region 0 is fed at an early timestep bin (large discrepancies) and once late; region 1 only late,
    where it is worse than region 0. Raw means rank region 0 first; bin-normalised ones region 1."""
    window = RegionWindow(num_regions=3, num_bins=2)
    window.add(Feedback.from_samples([0, 0, 0, 0, 0], [10, 10, 10, 10, 1], 3, bins=[0, 0, 0, 0, 1], num_bins=2))
    window.add(Feedback.from_samples([1, 1, 1, 1], [2, 2, 2, 2], 3, bins=[1, 1, 1, 1], num_bins=2))
    raw, normalised = window.take()
    late_mean = (1 + 8) / 5  # bin 1 over all regions
    assert raw == pytest.approx([41 / 5, 2.0, None]) and raw[2] is None
    assert normalised[:2] == pytest.approx([(4 * 10 / 10 + 1 / late_mean) / 5, (4 * 2 / late_mean) / 4])
    assert normalised[2] is None and normalised[1] > normalised[0] and raw[0] > raw[1]
    assert window.take() == ([None] * 3, [None] * 3)  # taking empties the window


def test_one_bin_normalises_by_the_overall_mean():
    window = RegionWindow(num_regions=2)
    window.add(Feedback.from_samples([0, 1, 1], [3.0, 1.0, 2.0], 2))
    raw, normalised = window.take()
    assert raw == pytest.approx([3.0, 1.5]) and normalised == pytest.approx(list(np.array(raw) / 2.0))
