"""Rewards: the contract's input/output checks, the built-in rewards and their composition."""

from __future__ import annotations

import math
import subprocess
import sys

import pydantic
import pytest
import torch

from vgrl import registry, rewards
from vgrl.rewards.base import Reward, RewardInputError, RewardOptions
from vgrl.rewards.compose import Compose, standardise
from vgrl.types import RewardOutput
from vgrl.worlds.shapes import ObjectSpec, PromptMeta, ShapesWorld


class Fixed(Reward):
    """Test reward: returns the scores given in its options."""

    name = "fixed"
    differentiable = False
    granularity = "pointwise"

    class Options(RewardOptions):
        values: list[float]

    def compute(self, images, prompts, metadata):
        return RewardOutput(torch.tensor(self.options.values, dtype=torch.float32, device=images.device),
                            {"raw": list(self.options.values)})


class Brightness(Reward):
    """Test reward: mean pixel value, differentiable."""

    name = "brightness"
    differentiable = True
    granularity = "pointwise"

    def compute(self, images, prompts, metadata):
        return RewardOutput(images.float().mean((1, 2, 3)))


def _flat(values: list[float], size: int = 8) -> torch.Tensor:
    return torch.tensor(values).view(-1, 1, 1, 1).expand(-1, 3, size, size).clone()


@pytest.fixture(scope="module")
def world() -> ShapesWorld:
    return ShapesWorld(32)


# ---------------------------------------------------------------------- registry
def test_registry_lists_exactly_the_builtin_rewards():
    assert rewards.available() == registry.available("rewards") == [
        "aesthetic", "classifier", "clip_score", "compose", "diversity", "hpsv2", "image_reward", "jpeg",
        "learned_bt", "ocr", "pickscore", "remote", "shapes_checker", "shapes_critic", "win_rate", "world_checker"]
    for name in rewards.available():
        cls = registry.resolve("rewards", name)
        assert cls.name == name and isinstance(cls.differentiable, bool)
        assert cls.granularity in ("pointwise", "groupwise", "dense")
        assert cls.Options.model_config["extra"] == "forbid"


def test_importing_rewards_does_not_import_torch():
    code = "import sys, vgrl.rewards; vgrl.rewards.available(); assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_unknown_option_is_a_pydantic_error_naming_the_field():
    with pytest.raises(pydantic.ValidationError, match="qualty"):
        rewards.get("jpeg", qualty=3)
    with pytest.raises(pydantic.ValidationError, match="score"):
        rewards.get("shapes_checker", score="binary")
    assert rewards.get("jpeg", quality=50).options.quality == 50


# ---------------------------------------------------------------------- flags
# rewards that need a resource this test cannot give (weights on a local path, a server): their flags are
# tested with tiny random-init weights or a loopback server in test_learned_rewards / test_remote_reward
def test_compose_is_differentiable_only_if_every_term_is():
    x = _flat([0.2, 0.2, 0.2]).requires_grad_(True)  # brightness is constant across the batch
    both = Compose([(Brightness(), 1.0, "b"), (Brightness(), 2.0, "b2")], normalise="before")
    assert both.differentiable
    out = both(x, ["", "", ""])
    (g,) = torch.autograd.grad(out.scores.sum(), x)
    assert torch.isfinite(g).all()  # a constant term's standardisation has a finite gradient
    mixed = Compose([(Brightness(), 1.0, "b"), (rewards.get("jpeg"), 1.0, "j")])
    assert not mixed.differentiable and mixed(x, ["", "", ""]).scores.grad_fn is None


def test_differentiable_reward_must_keep_its_gradient():
    class Liar(Brightness):
        def compute(self, images, prompts, metadata):
            return RewardOutput(images.detach().mean((1, 2, 3)))

    with pytest.raises(RuntimeError, match="declares differentiable=True"):
        Liar()(_flat([0.1]).requires_grad_(True), [""])


# ---------------------------------------------------------------------- compose arithmetic
A, B, C = [1.0, 2.0, 3.0], [0.0, 0.0, 4.0], [5.0, 5.0, 5.0]


def _abc(normalise: str) -> Compose:
    return Compose([(Fixed(values=A), 2.0, "a"), (Fixed(values=B), 0.5, "b"), (Fixed(values=C), 1.0, "c")],
                   normalise=normalise)


def _run(reward: Reward) -> RewardOutput:
    return reward(_flat([0.0, 0.5, 1.0]), ["p", "q", "r"], [None, None, None])


def test_compose_none_is_the_weighted_sum():
    out = _run(_abc("none"))
    assert out.scores.tolist() == [7.0, 9.0, 13.0]  # 2*A + 0.5*B + C
    assert out.details["a"].tolist() == A and out.details["c"].tolist() == C
    assert "a/norm" not in out.details
    assert _abc("none").granularity == "pointwise" and _abc("before").granularity == "groupwise"


def test_compose_before_standardises_each_term():
    out = _run(_abc("before"))
    za = [-math.sqrt(1.5), 0.0, math.sqrt(1.5)]  # A: mean 2, var 2/3
    zb = [-1 / math.sqrt(2), -1 / math.sqrt(2), math.sqrt(2)]  # B: mean 4/3, var 32/9
    torch.testing.assert_close(out.details["a/norm"], torch.tensor(za), rtol=0, atol=1e-5)
    torch.testing.assert_close(out.details["b/norm"], torch.tensor(zb), rtol=0, atol=1e-5)
    assert torch.equal(out.details["c/norm"], torch.zeros(3))  # constant term: exactly 0, not NaN
    expected = [2 * a + 0.5 * b for a, b in zip(za, zb)]
    torch.testing.assert_close(out.scores, torch.tensor(expected), rtol=0, atol=1e-5)
    assert out.details["b"].tolist() == B  # raw scores logged too


def test_compose_after_standardises_the_sum():
    out = _run(_abc("after"))
    root = math.sqrt(56)  # sum [7, 9, 13]: mean 29/3, centred [-8, -2, 10]/3, var 56/9
    torch.testing.assert_close(out.scores, torch.tensor([-8 / root, -2 / root, 10 / root]), rtol=0, atol=1e-5)
    assert out.details["total"].tolist() == [7.0, 9.0, 13.0] and "a/norm" not in out.details


def test_standardise_constant_and_single_sample():
    assert torch.equal(standardise(torch.full((4,), 0.1), 1e-8), torch.zeros(4))
    assert torch.equal(standardise(torch.tensor([3.0]), 1e-8), torch.zeros(1))


def test_compose_from_spec():
    c = Compose.from_spec([{"name": "jpeg", "weight": 0.5, "options": {"quality": 80}},
                           {"name": "jpeg", "label": "jpeg_inc", "options": {"mode": "incompressibility"}}],
                          normalise="after")
    assert [t.name for t in c.terms] == ["jpeg", "jpeg_inc"] and [t.weight for t in c.terms] == [0.5, 1.0]
    assert c.terms[0].reward.options.quality == 80 and c.options.normalise == "after"
    out = c(_flat([0.0, 1.0]), ["", ""])
    assert set(out.details) == {"jpeg", "jpeg/size_kb", "jpeg_inc", "jpeg_inc/size_kb", "total"}


@pytest.mark.parametrize("spec,err,match", [
    ([{"name": "jpeg"}, {"name": "jpeg", "options": {"qualty": 3}}], ValueError,
     r"terms\[1\]\.options\.qualty: Extra inputs"),
    ([{"name": "jpeg", "wieght": 1}], ValueError, r"terms\[0\]: unknown field\(s\) 'wieght'"),
    ([{"weight": 1}], ValueError, r"terms\[0\]\.name is required"),
    ([{"name": "jpg"}], registry.RegistryError, r"terms\[0\]\.name: unknown reward 'jpg'"),
    ([{"name": "jpeg"}, {"name": "jpeg", "weight": "x"}], ValueError, r"terms\[1\]\.weight must be a finite"),
    ([{"name": "jpeg"}, {"name": "jpeg"}], ValueError, r"terms\[1\]\.name 'jpeg' repeats"),
    ([{"name": "jpeg", "options": 3}], TypeError, r"terms\[0\]\.options must be a mapping"),
    ([], TypeError, "non-empty"),
])
def test_compose_from_spec_errors_name_index_and_field(spec, err, match):
    with pytest.raises(err, match=match):
        Compose.from_spec(spec)


def test_compose_rejects_bad_terms():
    with pytest.raises(TypeError, match=r"terms\[0\]\.reward must be a vgrl Reward"):
        Compose([("jpeg", 1.0, "j")])
    with pytest.raises(ValueError, match=r"terms\[0\]\.weight must be a finite number, got nan"):
        Compose([(rewards.get("jpeg"), float("nan"), "j")])
    with pytest.raises(pydantic.ValidationError, match="normalise"):
        Compose([(rewards.get("jpeg"), 1.0, "j")], normalise="both")


# ---------------------------------------------------------------------- shapes checker
def _metas() -> list[PromptMeta]:
    ob = ObjectSpec
    return [PromptMeta("colors", (ob("circle", "red"),)),
            PromptMeta("counting", (ob("square", "blue", 3),)),
            PromptMeta("position", (ob("triangle", "green"), ob("cross", "yellow")), "left_of"),
            PromptMeta("color_attr", (ob("circle", "cyan"), ob("square", "magenta")))]


def _mismatched() -> list[PromptMeta]:
    ob = ObjectSpec
    return [PromptMeta("colors", (ob("circle", "blue"),)),
            PromptMeta("counting", (ob("square", "blue", 2),)),
            PromptMeta("position", (ob("triangle", "green"), ob("cross", "yellow")), "right_of"),
            PromptMeta("color_attr", (ob("circle", "magenta"), ob("square", "cyan")))]


@pytest.mark.parametrize("score", ["partial", "pass"])
def test_checker_passes_ground_truth_and_fails_mismatches(world, score):
    reward = rewards.get("shapes_checker", score=score)
    metas = _metas()
    images = world.render(metas, seed=1)
    good = reward(images, [""] * 4, metas)
    assert good.scores.tolist() == [1.0] * 4 and good.details["passed"].tolist() == [True] * 4
    assert good.details["category"] == ["colors", "counting", "position", "color_attr"]
    bad = reward(images, [""] * 4, _mismatched())
    assert not bad.details["passed"].any()
    if score == "pass":
        assert bad.scores.tolist() == [0.0] * 4
    else:  # partial credit: strictly between 0 and 1 (some facts hold)
        assert ((bad.scores > 0) & (bad.scores < 1)).all(), bad.scores


@pytest.mark.parametrize("score", ["partial", "pass"])
def test_checker_extra_penalty_charges_extra_objects_only(world, score):
    """Three green triangles pass 'a green triangle' (GenEval's rule) and are flagged as extras; the penalty
    takes lambda off that sample's score and leaves an exact sample alone."""
    three = PromptMeta("counting", (ObjectSpec("triangle", "green", 3),))
    one = PromptMeta("colors", (ObjectSpec("triangle", "green"),))
    images = world.render([three], seed=0).expand(2, -1, -1, -1)
    plain = rewards.get("shapes_checker", score=score)(images, ["", ""], [three, one])
    assert plain.scores.tolist() == [1.0, 1.0] and plain.details["extra_objects"].tolist() == [False, True]
    charged = rewards.get("shapes_checker", score=score, extra_penalty=0.25)(images, ["", ""], [three, one])
    assert charged.scores.tolist() == [1.0, 0.75] and charged.details["passed"].tolist() == [True, True]
    with pytest.raises(ValueError, match="extra_penalty"):
        rewards.get("shapes_checker", extra_penalty=-1)


def test_checker_rejects_bad_metadata_and_resolution(world):
    reward = rewards.get("shapes_checker")
    metas = _metas()[:2]
    images = world.render(metas)
    with pytest.raises(RewardInputError, match=r"metadata\[1\] must be a shapes-world PromptMeta"):
        reward(images, ["", ""], [metas[0], "a photo of a circle"])
    with pytest.raises(RewardInputError, match=r"metadata\[0\].*got NoneType"):
        reward(images, ["", ""])
    with pytest.raises(RewardInputError, match=r"images must be 32x32"):
        reward(_flat([0.1, 0.1], size=16), ["", ""], metas)


# ---------------------------------------------------------------------- jpeg
def test_jpeg_prefers_flat_under_compressibility_and_noise_under_incompressibility():
    flat = torch.full((1, 3, 32, 32), 0.5)
    noise = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    images = torch.cat([flat, noise])
    comp = rewards.get("jpeg")(images, ["", ""])
    inc = rewards.get("jpeg", mode="incompressibility")(images, ["", ""])
    assert comp.scores[0] > comp.scores[1] and inc.scores[1] > inc.scores[0]
    torch.testing.assert_close(comp.scores, -inc.scores)
    torch.testing.assert_close(comp.details["size_kb"], -comp.scores)
    assert (comp.details["size_kb"] > 0).all()


# ---------------------------------------------------------------------- inputs
@pytest.mark.parametrize("images,prompts,metadata,err,match", [
    ([[0.0]], [""], None, TypeError, "images must be a torch.Tensor"),
    (torch.zeros(2, 3, 8, 8, dtype=torch.uint8), ["", ""], None, TypeError, "images must be a floating"),
    (torch.zeros(2, 1, 8, 8), ["", ""], None, RewardInputError, r"images must have shape \(B, 3, H, W\)"),
    (torch.zeros(3, 8, 8), ["", ""], None, RewardInputError, r"images must have shape"),
    (torch.zeros(0, 3, 8, 8), [], None, RewardInputError, "images is an empty batch"),
    (torch.full((2, 3, 8, 8), 1.5), ["", ""], None, RewardInputError, r"images must lie in \[0, 1\]"),
    (torch.full((2, 3, 8, 8), float("nan")), ["", ""], None, RewardInputError, "images contain non-finite"),
    (torch.zeros(2, 3, 8, 8), [""], None, RewardInputError, "prompts has 1 entries but images has batch size 2"),
    (torch.zeros(2, 3, 8, 8), "ab", None, TypeError, "prompts must be a list"),
    (torch.zeros(2, 3, 8, 8), ["", 3], None, TypeError, r"prompts\[1\] must be a str"),
    (torch.zeros(2, 3, 8, 8), ["", ""], [None], RewardInputError, "metadata has 1 entries"),
])
def test_bad_inputs_raise_naming_the_argument(images, prompts, metadata, err, match):
    with pytest.raises(err, match=match):
        rewards.get("jpeg")(images, prompts, metadata)


def test_broken_reward_output_raises():
    class NaNs(Fixed):
        pass

    with pytest.raises(ValueError, match=r"non-finite scores for samples \[1\]"):
        NaNs(values=[0.0, math.nan])(_flat([0.0, 0.0]), ["", ""])

    class Doubles(Fixed):
        def compute(self, images, prompts, metadata):
            return RewardOutput(super().compute(images, prompts, metadata).scores.double())

    with pytest.raises(TypeError, match="scores must be float32"):
        Doubles(values=[0.0])(_flat([0.0]), [""])


def test_shapes_checker_dense_map_localises_a_planted_defect():
    world = ShapesWorld(32)
    prompts = world.prompts("train", "position")[:2] + world.prompts("train", "counting")[:2]
    metas = [p.meta for p in prompts]
    images = world.render(metas, seed=0)
    reward = rewards.get("shapes_checker", dense=True)
    assert reward.granularity == "dense" and rewards.get("shapes_checker").granularity == "pointwise"
    clean = reward(images, [p.text for p in prompts], metas)
    assert clean.dense.shape == (4, 32, 32) and clean.dense.dtype == torch.float32
    assert torch.equal(clean.dense, torch.ones(4, 32, 32))  # perfect renders: credit 1 everywhere
    assert torch.equal(clean.scores, rewards.get("shapes_checker")(images, [p.text for p in prompts], metas).scores)
    defect = images.clone()
    defect[0, :, 1:7, 1:7] = torch.tensor([1.0, 1.0, 0.0]).view(3, 1, 1)  # an extra yellow square in a corner
    out = reward(defect, [p.text for p in prompts], metas)
    dense = out.dense[0]
    assert (dense[1:7, 1:7] == 0).all()                       # the defect's pixels carry no credit
    assert (dense[7:, 7:] == out.scores[0]).all() or (dense[7:, 7:] >= 0.5).all()
    assert torch.equal(out.dense[1:], clean.dense[1:])        # other samples untouched
    # two red circles judged against "a red circle left of a red square": the circles match the first
    # object (fact 1, relation failed -> credit 0.5), the background keeps the score 1/3
    wrong = reward(images[2:3], [prompts[0].text], [metas[0]])
    assert wrong.scores.tolist() == pytest.approx([1 / 3])
    assert sorted(torch.unique(wrong.dense).tolist()) == pytest.approx([1 / 3, 0.5])
    # the map's level follows the reward: with an extra-object penalty or the pass score its background is the
    # sample's reward and its deviations from the reward are the partial-credit map's
    pair = torch.cat([defect[:1], images[2:3]])  # an extra object (partial 1, passes); a failed relation (1/3)
    texts, pair_metas = [prompts[0].text] * 2, [metas[0]] * 2
    plain = reward(pair, texts, pair_metas)
    for options, want in (({"extra_penalty": 0.5}, [0.5, 1 / 3]), ({"score": "pass"}, [1.0, 0.0]),
                          ({"score": "pass", "extra_penalty": 0.25}, [0.75, 0.0])):
        shifted = rewards.get("shapes_checker", dense=True, **options)(pair, texts, pair_metas)
        assert shifted.scores.tolist() == pytest.approx(want)
        assert torch.allclose(shifted.dense - shifted.scores.view(-1, 1, 1), plain.dense - plain.scores.view(-1, 1, 1))
    penalised = rewards.get("shapes_checker", dense=True, extra_penalty=0.5)(pair, texts, pair_metas)
    assert (penalised.dense[0, 1:7, 1:7] == -0.5).all()  # the extra square's pixels: no credit, and the penalty
    assert (penalised.dense[0, 7:, 7:] == 0.5).all()  # matched objects (credit 1) and background: 1 - 0.5
    # a batch in which nothing is detected (blank images): the map is the score everywhere
    blank = reward(torch.zeros(2, 3, 32, 32), [prompts[0].text, prompts[2].text], metas[:1] + metas[2:3])
    assert blank.dense.shape == (2, 32, 32)
    assert torch.equal(blank.dense, blank.scores.view(2, 1, 1).expand(2, 32, 32))
