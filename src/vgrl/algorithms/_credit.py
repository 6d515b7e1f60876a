"""Dense credit maps -> working-space weights, for every sample layout; shared by NFT and the pairwise losses.

A private module (the leading underscore keeps it out of the registry). A reward's dense map
(:class:`~vgrl.types.RewardOutput` ``dense``) has the sample layout's leading axes and a spatial grid::

    image       (B, H, W)          per pixel
    video       (B, F, H, W)       per frame and pixel   (F, 1, 1): one credit per frame
    multiview   (B, V, H, W)       per view and pixel    (V, 1, 1): one credit per view

The working space (a backbone's ``sample_shape``, the tensors the losses compare) keeps those leading
axes first and the channels third from last: ``(B, C, h, w)`` for an image, ``(B, F', C, h, w)`` /
``(B, V, C, h, w)`` otherwise. :func:`to_working_space` area-resizes the map over its leading axes and
its grid to the working space's (``F -> F'`` for a temporally compressed latent, ``H, W -> h, w``) and
shares it across the channels. Nothing here knows which modality it serves: only the number of leading
axes matters, so an image map takes exactly the 2-D area resize it always took.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vgrl._lazy import lazy

if TYPE_CHECKING:
    from torch import Tensor

torch = lazy("torch")
F = lazy("torch.nn.functional")


def per_sample(x: Tensor, like: Tensor) -> Tensor:
    """``(B,)`` ``x`` viewed as ``(B, 1, ..., 1)`` to broadcast against ``like`` ``(B, ...)``."""
    return x.view(-1, *([1] * (like.ndim - 1)))


def check_map(dense: Tensor, batch: int, who: str) -> None:
    """Raise ``ValueError`` unless ``dense`` is a ``(B, [N,] H, W)`` credit map of ``batch`` samples."""
    if dense.ndim not in (3, 4) or dense.shape[0] != batch:
        raise ValueError(f"{who} needs a reward's dense credit map (B, H, W) per pixel or (B, F|V, H, W) per frame "
                         f"or view, with B = {batch}, got {tuple(dense.shape)}")


def to_working_space(m: Tensor, like: Tensor, who: str = "dense_credit") -> Tensor:
    """A ``(B, *L, H, W)`` map -> float32 ``(B, *L', 1, h, w)`` weights for ``like`` ``(B, *L', C, h, w)``.

    Area resize over ``(*L, H, W) -> (*L', h, w)``: the mean of the map over the pixels (frames) each
    working-space element covers, or replication where the map is coarser.
    """
    lead = m.ndim - 3  # leading axes besides the batch: 0 (image) or 1 (frames / views)
    if like.ndim != m.ndim + 1 or like.shape[0] != m.shape[0]:
        raise ValueError(f"{who}: a credit map {tuple(m.shape)} needs a working space (B, {'N, ' * lead}C, h, w) with "
                         f"the same leading axes (the backbone's latents keep the sample layout's frame / view axis "
                         f"first), got {tuple(like.shape)}")
    size = (*like.shape[1:1 + lead], *like.shape[-2:])
    return F.interpolate(m[:, None].to(torch.float32), size=size, mode="area")[:, 0].unsqueeze(-3)
