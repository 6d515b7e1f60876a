"""Registry lookup and the typed stage dataclasses."""

from __future__ import annotations

import pytest
import torch

from vgrl import registry
from vgrl.types import Cond, DeterministicKernelError, RewardOutput, Transition


def test_builtin_keys_are_module_names():
    assert {"ddim", "flow_sde", "dance_sde", "cps", "ode"} <= set(registry.available("kernels"))
    assert "base" not in registry.available("kernels") and "options" not in registry.available("kernels")
    assert set(registry.available("backbones")) == {"sd", "flow"}
    for name in registry.available("kernels"):
        assert registry.resolve("kernels", name).name == name


def test_external_component_by_path():
    assert registry.resolve("kernels", "vgrl.kernels.ode:COMPONENT") is registry.resolve("kernels", "ode")


@pytest.mark.parametrize("kind,name,match", [
    ("kernels", "flow_sdee", "unknown kernel 'flow_sdee'; valid: .*flow_sde"),
    ("kernelz", "ode", "unknown component kind 'kernelz'"),
    ("kernels", "no_such_pkg_xyz.mod:K", "cannot import module 'no_such_pkg_xyz.mod'"),
    ("kernels", "vgrl.kernels.ode:Nope", "has no attribute 'Nope'"),
    ("kernels", ":K", "not of the form"),
])
def test_bad_names_raise_clearly(kind, name, match):
    with pytest.raises(registry.RegistryError, match=match):
        registry.resolve(kind, name)


def test_deterministic_transition_refuses_log_prob():
    tr = Transition(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(()))
    assert not tr.stochastic
    with pytest.raises(DeterministicKernelError):
        _ = tr.log_prob
    assert Transition(torch.zeros(2), torch.zeros(2), torch.ones(()), torch.zeros(2)).log_prob.shape == (2,)


def test_cond_ops_keep_rows_aligned():
    c = Cond(embeds=torch.arange(6.).view(3, 2, 1), pooled=torch.arange(3.).view(3, 1))
    r = c.repeat_interleave(2)
    assert len(r) == 6 and r.pooled.flatten().tolist() == [0, 0, 1, 1, 2, 2] and r.uncond_embeds is None
    assert torch.equal(r.index([4]).embeds, c.embeds[2:3])
    assert len(Cond.cat([c, c])) == 6


def test_reward_output_requires_vector_scores():
    with pytest.raises(ValueError, match=r"shape \(B,\)"):
        RewardOutput(scores=torch.zeros(2, 1))
