"""Reward-hacking monitor: gold metrics, diversity and feature drift next to the proxy reward.

A policy optimised against a proxy reward (a learned model, a compressibility score, ...) can raise it
while what the reward stood for gets worse: the survey's *reward hacking*. At every held-out evaluation
the monitor logs, on the evaluation's fixed prompts and seeds:

* ``proxy_reward``: the mean of the **training** reward on the evaluation samples (its
  ``monitor_scores``: for a groupwise reward, its pointwise counterpart — a ``win_rate``'s inner reward,
  a standardised ``compose``'s unstandardised weighted sum; omitted, with one warning, for a reward
  that has none, such as ``diversity``);
* ``gold``: a metric the run does not train on — the overall value of the world's headline field where
  it declares one (``World.fields``; a stricter accuracy that a policy gaming the checker's rules cannot
  raise, see the world's docs), else the checker's accuracy (``overall_accuracy``);
* ``diversity``: intra-prompt diversity, the mean over ``diversity_prompts`` prompts of the mean pairwise
  cosine distance ``1 - cos(f_i, f_j)`` between the EfficientNet-lite0 features ``f`` of
  ``diversity_seeds`` samples of that prompt (the deterministic sampler, fixed seeds: only the
  initial noise differs), in the spirit of Miao et al. (CVPR 2024);
* ``frechet``: the Fréchet distance between Gaussians fitted to the features of the evaluation
  samples and of the base model's (the first evaluation, normally ``eval.before``)::

      FD = ||mu - mu_0||^2 + Tr(S + S_0 - 2 (S_0^{1/2} S S_0^{1/2})^{1/2})

  (the FID formula, Heusel et al., arXiv 1706.08500, on EfficientNet features of 32 px samples: a
  drift measure relative to the base model, not comparable with published FIDs).

``hacking_warning`` is 1 when, over the last ``patience`` consecutive evaluations, the proxy rose every
time while the gold metric fell every time (``patience + 1`` evaluations are compared). The trainer logs
these in the ``eval`` rows of ``metrics.jsonl``; ``report.html`` plots them and lists the warnings.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from vgrl.rewards.base import RewardInputError
from vgrl.rewards.classifier import efficientnet_features
from vgrl.rewards.diversity import groupwise_cosine_diversity


def frechet_distance(a: Tensor, b: Tensor) -> float:
    """Fréchet distance between Gaussians fitted to feature sets ``a`` ``(N, D)`` and ``b`` ``(M, D)`` (float64).

    With centred, scaled sets ``A = (a - mu_a) / sqrt(N - 1)`` and ``B`` likewise, ``S_a = A^T A`` and
    ``S_b = B^T B``; the non-zero eigenvalues of ``S_b^{1/2} S_a S_b^{1/2}`` are the squared singular
    values of ``A B^T`` (``N x M``), so ``Tr((...)^{1/2})`` is the nuclear norm of ``A B^T``: exact, and
    stable when ``N, M < D`` (rank-deficient covariances, where an eigendecomposition of ``S`` is not).
    """
    a, b = a.double(), b.double()
    mu_a, mu_b = a.mean(0), b.mean(0)
    ca, cb = (a - mu_a) / max(len(a) - 1, 1) ** 0.5, (b - mu_b) / max(len(b) - 1, 1) ** 0.5
    cross = torch.linalg.svdvals(ca @ cb.T).sum()
    return float(((mu_a - mu_b) ** 2).sum() + (ca**2).sum() + (cb**2).sum() - 2 * cross)


def rising_while_falling(history: list[tuple[float, float]], patience: int) -> bool:
    """True when ``proxy`` rose and ``gold`` fell at each of the last ``patience`` steps of ``history``
    (a list of ``(proxy, gold)``, oldest first)."""
    if len(history) < patience + 1:
        return False
    tail = history[-(patience + 1):]
    return all(p1 > p0 and g1 < g0 for (p0, g0), (p1, g1) in zip(tail, tail[1:]))


@dataclass
class HackingMonitor:
    """Computes the monitor's metrics from an evaluation's samples (module docstring).

    Args:
        reward: the run's training reward (the proxy), or None to skip ``proxy_reward``.
        patience: evaluations of proxy-up / gold-down in a row that raise ``hacking_warning``.
        feature_resolution: side the samples are resized to for EfficientNet-lite0.
    """

    reward: Any
    patience: int = 3
    feature_resolution: int = 96
    base_features: Tensor | None = None
    history: list[tuple[float, float]] = field(default_factory=list)
    proxy_error: str | None = None  # why the reward gives no proxy on the evaluation set, once known

    def features(self, images: Tensor, batch: int = 128) -> Tensor:
        """``(N, 1280)`` float32 EfficientNet-lite0 features of ``images`` ``(N, 3, H, W)`` in [0, 1]."""
        with torch.no_grad():
            return torch.cat([efficientnet_features(images[i:i + batch].float(), self.feature_resolution)
                              for i in range(0, len(images), batch)]).float().cpu()

    def observe(self, images: Tensor, prompts: list[str], metadata: list[Any], gold: float,
                diversity_images: Tensor | None = None, diversity_groups: Tensor | None = None) -> dict[str, float]:
        """Metrics of one evaluation: ``images`` are its samples (with their ``prompts`` / ``metadata``),
        ``gold`` its gold metric; ``diversity_images`` ``(K G, 3, H, W)`` with ``diversity_groups`` ``(K G,)``."""
        out: dict[str, float] = {"gold": gold}
        if self.reward is not None and self.proxy_error is None:
            try:
                out["proxy_reward"] = self.reward.monitor_scores(images, prompts, metadata).float().mean().item()
            except RewardInputError as e:  # a groupwise reward with no pointwise counterpart (e.g. diversity)
                self.proxy_error = str(e)
                warnings.warn(f"eval.monitor: no proxy_reward for this run's reward ({e}); the hacking "
                              "warning needs it, diversity and drift are still measured", stacklevel=2)
        feats = self.features(images)
        if self.base_features is None:
            self.base_features = feats
        out["frechet"] = frechet_distance(feats, self.base_features)
        if diversity_images is not None:
            div = groupwise_cosine_diversity(self.features(diversity_images), diversity_groups)
            out["diversity"] = div.mean().item()
        if "proxy_reward" in out:
            self.history.append((out["proxy_reward"], gold))
            out["hacking_warning"] = float(rising_while_falling(self.history, self.patience))
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"base_features": self.base_features, "history": [list(h) for h in self.history]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.base_features = state["base_features"]
        self.history = [tuple(h) for h in state["history"]]
