"""Advantage maths against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from vgrl.advantages import PerPromptStatTracker, group_advantages, group_stats


def test_group_advantages_by_hand():
    r = torch.tensor([1.0, 3.0, 0.0, 0.0, 2.0, 6.0])
    g = torch.tensor([0, 0, 1, 1, 2, 2])
    adv = group_advantages(r, g, eps=0.0 + 1e-12)
    # group 0: mean 2, std 1 -> -1, +1; group 1: constant -> 0; group 2: mean 4, std 2 -> -1, +1
    assert torch.allclose(adv, torch.tensor([-1.0, 1.0, 0.0, 0.0, -1.0, 1.0]), atol=1e-6)


def test_global_std_and_clip():
    r = torch.tensor([1.0, 3.0, 0.0, 4.0])
    g = torch.tensor([5, 5, 9, 9])
    std = math.sqrt(((r - r.mean()) ** 2).mean().item())  # population std of all rewards
    adv = group_advantages(r, g, global_std=True, eps=0.0)
    assert torch.allclose(adv, torch.tensor([-1.0, 1.0, -2.0, 2.0]) / std, atol=1e-6)
    assert group_advantages(r * 100, g, clip=0.5).abs().max().item() == 0.5


def test_groups_need_not_be_contiguous():
    r = torch.tensor([1.0, 10.0, 3.0, 30.0])
    g = torch.tensor([0, 1, 0, 1])
    mean, std = group_stats(r, g)
    assert mean.tolist() == [2.0, 20.0, 2.0, 20.0] and std.tolist() == [1.0, 10.0, 1.0, 10.0]


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="non-finite rewards at samples \\[1\\]"):
        group_advantages(torch.tensor([0.0, float("nan")]), torch.tensor([0, 0]))
    with pytest.raises(ValueError, match="shape"):
        group_advantages(torch.zeros(3), torch.zeros(2))


def test_per_prompt_tracker_switches_to_prompt_history_and_resumes_exactly():
    t = PerPromptStatTracker(buffer_size=4, min_count=3)
    first = t.update(["a", "a", "b"], torch.tensor([0.0, 2.0, 4.0]))
    batch = torch.tensor([0.0, 2.0, 4.0])
    assert torch.allclose(first, (batch - 2.0) / (batch.std(unbiased=False) + 1e-6))  # too few: batch stats
    state = t.state_dict()
    second = t.update(["a", "b"], torch.tensor([4.0, 4.0]))
    hist_a = torch.tensor([0.0, 2.0, 4.0])  # "a" now has 3 >= min_count rewards
    assert second[0].item() == pytest.approx(((4.0 - hist_a.mean()) / (hist_a.std(unbiased=False) + 1e-6)).item())
    resumed = PerPromptStatTracker()
    resumed.load_state_dict(state)
    assert torch.equal(resumed.update(["a", "b"], torch.tensor([4.0, 4.0])), second)
    with pytest.raises(ValueError, match="min_count"):
        PerPromptStatTracker(buffer_size=2, min_count=3)
