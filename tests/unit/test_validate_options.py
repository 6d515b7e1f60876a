"""``vgrl validate`` checks what ``vgrl train`` checks before it loads a model: every reward, algorithm and
kernel option of a built-in component (by the component's own ``Options``, nested reward specs included) and
the algorithm's ``needs`` against kernel, reward, groups, reference and precisions; torch-free."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from vgrl import registry
from vgrl.cli import main
from vgrl.config import KERNEL_PREDICTIONS, ConfigError, load_config

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = str(ROOT / "configs" / "quickstart.yaml")  # nft, shapes_checker, ode kernel, groups of 8
FLOW_GRPO = str(ROOT / "configs" / "bench" / "flow_grpo.yaml")
SHIPPED = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "configs").rglob("*.yaml"))

# (config, override, the one line's start): each refused by validate with one line naming the field
BAD = [
    (QUICKSTART, "algorithm.beta=-1", "algorithm.beta: input should be greater than 0"),
    (QUICKSTART, "algorithm.bogus=1", "algorithm.bogus: unknown option 'bogus' for algorithm 'nft'"),
    (QUICKSTART, "algorithm.old_policy=newest", "algorithm.old_policy: input should be"),
    (QUICKSTART, "algorithm.kl=-0.5", "algorithm.kl: input should be greater than or equal to 0"),
    (QUICKSTART, "reward.score=perfect", "reward.score: input should be 'partial' or 'pass'"),
    (QUICKSTART, "reward.bogus=1", "reward.bogus: unknown option 'bogus' for reward 'shapes_checker'"),
    (QUICKSTART, "reward={name: jpeg, quality: 0}", "reward.quality: input should be greater than or equal to 1"),
    (QUICKSTART, "reward={name: compose, terms: [{name: jpeg, options: {qualty: 5}}]}",
     "reward.terms.0.options.qualty: unknown option"),
    (QUICKSTART, "reward={name: compose, terms: [{name: jpeg}, {name: jpgg}]}", "reward.terms.1.name: unknown reward"),
    (QUICKSTART, "reward={name: compose, terms: [{name: jpeg, wieght: 2}]}", "reward.terms.0.wieght: unknown field"),
    (QUICKSTART, "reward={name: compose}", "reward.terms: a non-empty list"),
    (QUICKSTART, "reward={name: compose, normalise: always, terms: [{name: jpeg}]}", "reward.normalise: input should be"),
    (QUICKSTART, "reward={name: win_rate}", "reward.inner: missing"),
    (QUICKSTART, "reward={name: win_rate, inner: {name: jpeg, options: {quality: 101}}}",
     "reward.inner.options.quality: input should be less than or equal to 100"),
    (QUICKSTART, "reward={name: remote}", "reward.url: missing"),
    (FLOW_GRPO, "kernel.noise_level=9", "kernel.noise_level: input should be less than or equal to 3"),
    (FLOW_GRPO, "kernel.reduction=max", "kernel.reduction: input should be 'mean' or 'sum'"),
    (QUICKSTART, "group_size=1", "group_size: algorithm 'nft' compares the samples of a prompt group"),
    (FLOW_GRPO, ("kernel={name: ode}", "sampling.plan.kind=ode"), "kernel.name: algorithm 'flow_grpo' needs per-step log-probabilities"),
    (FLOW_GRPO, "algorithm={name: reward_backprop}", "reward.name: algorithm 'reward_backprop' back-propagates"),
    (FLOW_GRPO, ("algorithm.beta=0.01", "train.reference=none"), "train.reference: 'none' but algorithm 'flow_grpo'"),
    (FLOW_GRPO, ("deterministic=false", "sampling.mixed_precision=bf16"), "sampling.mixed_precision: 'bf16' differs"),
]


@pytest.mark.parametrize("config,override,line", BAD, ids=[" ".join(b[1]) if isinstance(b[1], tuple) else b[1]
                                                          for b in BAD])
def test_bad_option_refused_in_one_line(config, override, line, capsys):
    overrides = override if isinstance(override, tuple) else (override,)
    assert main(["validate", config, *overrides]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0] == f"error: {config}"
    assert any(e.strip().startswith(line) for e in err[1:]), err
    assert all("Traceback" not in e for e in err)


def test_sampling_configs_are_not_checked_against_the_default_algorithm(capsys):
    """A config without an algorithm section is one for ``vgrl sample``: an ODE kernel with groups of 1 is fine."""
    sample = str(ROOT / "configs" / "sample.yaml")
    assert main(["validate", sample, "kernel={name: ode}", "sampling.plan.kind=ode", "group_size=1"]) == 0
    assert main(["validate", sample, "kernel={name: ode}", "sampling.plan.kind=ode", "algorithm={name: ddpo}"]) == 2
    assert "kernel.name: algorithm 'ddpo' needs per-step log-probabilities" in capsys.readouterr().err


def test_good_options_pass_and_defaults_stay_out_of_the_config():
    cfg = load_config(QUICKSTART, ["algorithm.beta=2.0", "reward={name: compose, terms: [{name: jpeg, weight: 0.5}]}"])
    assert cfg.algorithm.options()["beta"] == 2.0 and cfg.algorithm.needs.groups
    assert cfg.reward.options() == {"terms": [{"name": "jpeg", "weight": 0.5}]} and cfg.reward.differentiable is False


def test_out_of_tree_components_are_not_imported():
    cfg = load_config(QUICKSTART, ["algorithm={name: 'nowhere.mod:Algo', anything: 1}",
                                   "reward={name: 'nowhere.mod:Reward', x: 1}"])
    assert cfg.algorithm.needs is None and cfg.reward.differentiable is None
    assert "nowhere" not in sys.modules
    with pytest.raises(ConfigError, match=r"reward.terms.0.options.nosuch: unknown option"):
        load_config(QUICKSTART, ["reward={name: compose, terms: [{name: 'nowhere.mod:R'}, {name: jpeg}]}",
                                 "reward.terms=[{name: jpeg, options: {nosuch: 1}}]"])


def _every_component_configs() -> list[list[str]]:
    """Override sets naming each built-in algorithm, reward and kernel once (on a config each accepts)."""
    runs = [[FLOW_GRPO, f"algorithm={{name: {a}}}", "reward={name: shapes_critic}"]
            for a in registry.available("algorithms")]
    for r in registry.available("rewards"):
        opts = {"compose": "terms: [{name: jpeg}]", "win_rate": "inner: {name: jpeg}", "remote": "url: 'http://x'",
                "learned_bt": "path: nowhere", "hpsv2": "path: x", "image_reward": "path: x", "pickscore": "path: x",
                "clip_score": "path: x", "aesthetic": "path: x, head: y"}.get(r, "")
        runs.append([QUICKSTART, f"reward={{name: {r}, {opts}}}"])
    for k in registry.available("kernels"):
        config = "sample.yaml" if "flow" in KERNEL_PREDICTIONS[k] else "sample_sd.yaml"
        runs.append([str(ROOT / "configs" / config), f"kernel={{name: {k}}}"]
                    + (["sampling.plan.kind=ode"] if k == "ode" else []))
    return runs


def test_validate_is_torch_free_for_every_shipped_config_and_component():
    """In one subprocess: validate each shipped config, and a config naming each built-in algorithm, reward
    and kernel; afterwards torch (nor diffusers, transformers) was never imported."""
    runs = [[c] for c in SHIPPED] + _every_component_configs()
    code = ("import sys; from vgrl.cli import main\n"
            f"for argv in {runs!r}:\n"
            "    rc = main(['validate', *argv])\n"
            "    assert rc == 0, (argv, rc)\n"
            "heavy = [m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules]\n"
            "assert not heavy, heavy\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("config", SHIPPED)
def test_every_shipped_config_still_validates(config, capsys):
    assert main(["validate", str(ROOT / config)]) == 0, capsys.readouterr().err
