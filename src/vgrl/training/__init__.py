"""The training stack: the loop and everything only training needs.

``loop`` (train -> iterate -> update -> evaluate -> save), ``build`` (the :class:`~vgrl.training.build.Run`
made from a config), ``state`` and ``checkpoint`` (exact resume), ``export`` (a checkpoint as a diffusers
pipeline), ``policy`` (LoRA, reference model, prompt sampler), ``schedule`` (LR), ``distributed`` (process
group) and ``tracking`` (metrics, tensorboard, progress). Lower layers (backbones, kernels, rewards, worlds,
evaluation) never import this package. Importing it is cheap; ``from vgrl.training.loop import train`` loads torch.
"""


class TrainingError(RuntimeError):
    """The run cannot go on (too many consecutive non-finite steps, a bad resume point, an invalid setting, ...)."""


class TrainingFailed(TrainingError):
    """The run started and could not go on (too many consecutive non-finite steps): ``vgrl train`` exits 1, where
    every other :class:`TrainingError` (an invalid setting, a bad resume point) is an input error that exits 2."""
