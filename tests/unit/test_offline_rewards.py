"""Offline reward models on real images: OCR (RapidOCR), ImageNet classifier and diversity (EfficientNet-lite0).

Images: words rendered with PIL's bundled font (:mod:`vgrl.worlds._text_prompts`) and scikit-image's
shipped sample photographs (``coffee``: an espresso cup, ``chelsea``: a tabby cat, ``astronaut``).
"""

from __future__ import annotations

import pydantic
import pytest
import torch
import torch.nn.functional as F
from skimage import data

from vgrl import rewards
from vgrl.rewards.base import RewardInputError
from vgrl.rewards.classifier import (
    class_index,
    efficientnet_features,
    efficientnet_logits,
    imagenet_labels,
    load_efficientnet_lite0,
    preprocess,
)
from vgrl.rewards.ocr import levenshtein, target_text
from vgrl.worlds._text_prompts import HELDOUT_WORDS, render_text, text_prompts

ESPRESSO, TABBY = 967, 281


def _photo(array, size: int = 224) -> torch.Tensor:
    x = torch.from_numpy(array).float().div(255.0).permute(2, 0, 1)[None]
    return F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0]


@pytest.fixture(scope="module")
def photos() -> torch.Tensor:
    """(3, 3, 224, 224): coffee (espresso), astronaut, chelsea (tabby cat)."""
    return torch.stack([_photo(data.coffee()), _photo(data.astronaut()), _photo(data.chelsea())])


@pytest.fixture(scope="module")
def ocr():
    return rewards.get("ocr", threads=1)


# ---------------------------------------------------------------------- OCR
def test_levenshtein_hand_values():
    assert levenshtein("kitten", "sitting") == 3 == levenshtein("sitting", "kitten")
    assert levenshtein("", "abc") == 3 and levenshtein("abc", "") == 3 and levenshtein("", "") == 0
    assert levenshtein("flaw", "lawn") == 2 and levenshtein("hello", "help") == 2


def test_target_comes_from_metadata_or_quoted_text():
    assert target_text('a sign that says "HELLO"', None) == "HELLO"
    assert target_text("a sign that says \u201cOPEN 24H\u201d", None) == "OPEN 24H"
    assert target_text('a sign that says "HELLO"', {"text": "STOP"}) == "STOP"  # metadata wins
    assert target_text('a "X" sign', {"class_index": 3}) == "X"  # a mapping without "text" falls back
    with pytest.raises(RewardInputError, match=r"sample 4 .*no double-quoted text"):
        target_text("a sign with a word on it", None, 4)
    with pytest.raises(RewardInputError, match=r'metadata\[0\]\["text"\]'):
        target_text('"A"', {"text": "  "})


def test_text_prompt_set():
    train, heldout = text_prompts("train"), text_prompts("heldout")
    assert {p.meta["text"] for p in heldout} == HELDOUT_WORDS
    assert not {p.meta["text"] for p in train} & HELDOUT_WORDS
    assert all(target_text(p.prompt, None) == p.meta["text"] for p in train + heldout)
    images = render_text(["HELLO", "STOP"], size=64)
    assert images.shape == (2, 3, 64, 64) and images.min() == 0.0 and images.max() == 1.0
    assert torch.equal(images, render_text(["HELLO", "STOP"], size=64))  # deterministic
    with pytest.raises(ValueError, match="split"):
        text_prompts("test")


def test_ocr_reads_rendered_words(ocr):
    prompts = [text_prompts("train")[0], text_prompts("train")[12], text_prompts("heldout")[4]]
    words = [p.meta["text"] for p in prompts]  # HELLO, STOP, JAZZ (held out)
    images = torch.cat([render_text(words, size=64), torch.ones(1, 3, 64, 64)])  # + a blank page
    out = ocr(images, [p.prompt for p in prompts] + ['a sign that says "HELLO"'],
              [p.meta for p in prompts] + [None])
    assert out.details["recognised"] == words + [""]
    assert out.scores.tolist() == [1.0, 1.0, 1.0, 0.0]
    assert out.scores.grad_fn is None


def test_ocr_scores_wrong_words_lower_by_the_edit_distance(ocr):
    hello = render_text(["HELLO"] * 4, size=64)
    prompts = ['a sign that says "HELP"', 'a sign that says "ell"', 'a sign that says "WORLD"', 'a sign "hello"']
    out = ocr(hello, prompts)
    # lev(hello, help) = 2 -> 1 - 2/4; "ell" occurs in "hello" -> 1; lev(hello, world) = 4 -> 1 - 4/5; case ignored
    assert out.scores.tolist() == pytest.approx([0.5, 1.0, 0.2, 1.0])
    strict = rewards.get("ocr", threads=1, substring_match=False, case_sensitive=True)
    out = strict(hello, prompts)
    # lev(HELLO, ell) = 5 (case-sensitive), capped at |ell| = 3 -> 0; lev(HELLO, hello) = 5 capped at 5 -> 0
    assert out.scores.tolist() == pytest.approx([0.5, 0.0, 0.2, 0.0])
    assert out.details["edit_distance"].tolist() == [2.0, 3.0, 4.0, 5.0]


def test_ocr_raises_without_target_text(ocr):
    with pytest.raises(RewardInputError, match="sample 1 has no target text"):
        ocr(render_text(["HELLO", "STOP"], size=64), ['a sign that says "HELLO"', "a stop sign"])
    with pytest.raises(pydantic.ValidationError, match="threads"):
        rewards.get("ocr", threads=0)


# ---------------------------------------------------------------------- classifier
def test_class_names_resolve_to_imagenet_indices():
    assert len(imagenet_labels()) == 1000
    assert class_index("espresso") == ESPRESSO and class_index("Tabby Cat") == TABBY
    with pytest.raises(ValueError, match="ambiguous"):
        class_index("crane")  # the bird (134) and the machine (517)
    with pytest.raises(ValueError, match="no ImageNet label"):
        class_index("spaceship interior")
    with pytest.raises(pydantic.ValidationError, match="not both"):
        rewards.get("classifier", class_index=1, class_name="goldfish")
    with pytest.raises(pydantic.ValidationError, match="less than 1000"):
        rewards.get("classifier", class_index=1000)


def test_classifier_prefers_the_sample_image_of_its_class(photos):
    espresso = rewards.get("classifier", class_name="espresso")(photos, [""] * 3)
    assert espresso.scores.argmax() == 0 and espresso.scores[0] > espresso.scores[1:].max() + 5.0
    assert espresso.details["top1"][0] == ESPRESSO
    # per-sample targets from metadata: the cat image is the most tabby-like
    meta = [{"class_name": "tabby"}, {"class_index": TABBY}, {"class_index": TABBY}]
    tabby = rewards.get("classifier", score="prob")(photos, [""] * 3, meta)
    assert tabby.scores.argmax() == 2 and tabby.scores[2] > 10 * tabby.scores[:2].max()
    assert torch.allclose(tabby.scores, tabby.details["prob"])
    with pytest.raises(RewardInputError, match="no target class for sample 0"):
        rewards.get("classifier")(photos[:1], [""])


def test_classifier_is_truthfully_differentiable(photos):
    reward = rewards.get("classifier", class_index=TABBY)
    x = photos[1:2].clone().requires_grad_(True)  # the astronaut
    out = reward(x, [""])
    (g,) = torch.autograd.grad(out.scores.sum(), x)
    assert g.abs().sum() > 0 and torch.isfinite(g).all()
    assert all(not p.requires_grad for p in load_efficientnet_lite0().parameters())
    # one small signed-gradient step up the gradient raises log p(tabby | x)
    stepped = (x.detach() + 2e-3 * g.sign()).clamp(0, 1)
    assert reward(stepped, [""]).scores.item() > out.scores.item() + 0.5


def test_features_and_logits_match_the_library_forward(photos):
    feats = efficientnet_features(photos)
    assert feats.shape == (3, 1280) and (feats >= 0).all()  # ReLU6 head, mean-pooled
    with torch.no_grad():
        library = load_efficientnet_lite0()(preprocess(photos))
    assert torch.allclose(efficientnet_logits(feats), library, atol=1e-4)
    # eval mode: a sample's score does not depend on its batch (pointwise)
    reward = rewards.get("classifier", class_name="espresso")
    whole = reward(photos, [""] * 3).scores
    parts = torch.cat([reward(photos[:1], [""]).scores, reward(photos[1:], [""] * 2).scores])
    assert torch.allclose(whole, parts, atol=1e-4)


# ---------------------------------------------------------------------- diversity
def test_diversity_is_zero_for_identical_images_and_higher_for_distinct(photos):
    coffee, astronaut, cat = photos
    images = torch.stack([coffee, coffee, coffee, astronaut, cat, coffee])
    prompts = ["a cup"] * 3 + ["anything"] * 3
    out = rewards.get("diversity")(images, prompts)
    assert out.scores[:3].abs().max() < 1e-6
    assert out.scores[3:].min() > 0.2
    assert out.details["group"].tolist() == [0, 0, 0, 1, 1, 1]


def test_diversity_equals_the_hand_formula_and_groups_do_not_mix(photos):
    coffee, astronaut, cat = photos
    reward = rewards.get("diversity")
    images = torch.stack([coffee, astronaut, cat, coffee, cat])
    prompts = ["p", "p", "p", "q", "q"]
    out = reward(images, prompts)
    f = efficientnet_features(photos)

    def cos_dist(a, b):
        return 1.0 - F.cosine_similarity(f[a], f[b], dim=0)

    expected = [(cos_dist(0, 1) + cos_dist(0, 2)) / 2, (cos_dist(1, 0) + cos_dist(1, 2)) / 2,
                (cos_dist(2, 0) + cos_dist(2, 1)) / 2, cos_dist(0, 2), cos_dist(2, 0)]
    assert torch.allclose(out.scores, torch.stack(expected), atol=1e-4)
    # replacing group q's images leaves group p's scores unchanged
    other = reward(torch.stack([coffee, astronaut, cat, astronaut, astronaut]), prompts)
    assert torch.allclose(other.scores[:3], out.scores[:3], atol=1e-5)
    assert other.scores[3:].abs().max() < 1e-6


def test_diversity_needs_groups_and_is_differentiable(photos):
    reward = rewards.get("diversity")
    with pytest.raises(RewardInputError, match=">= 2 samples"):
        reward(photos, ["a", "a", "b"])
    x = photos[:2].clone().requires_grad_(True)
    out = reward(x, ["a", "a"])
    (g,) = torch.autograd.grad(out.scores.sum(), x)
    assert g.abs().sum() > 0 and torch.isfinite(g).all()
