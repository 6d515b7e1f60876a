"""Run configuration: pydantic models (:mod:`.schema`) and YAML files with dotted overrides (:mod:`.io`).

Imports no torch, so ``vgrl validate`` answers in a fraction of a second.
"""

from vgrl.config.io import apply_overrides, dump_config, error_messages, load_config, save_config, validate_config
from vgrl.config.schema import (BACKBONE_LAYOUTS, BACKBONE_PREDICTIONS, KERNEL_PREDICTIONS, BackboneConfig,
                                ConfigError, KernelConfig, PlanConfig, RunConfig, SamplingConfig)

__all__ = ["BACKBONE_LAYOUTS", "BACKBONE_PREDICTIONS", "KERNEL_PREDICTIONS", "BackboneConfig", "ConfigError",
           "KernelConfig", "PlanConfig", "RunConfig", "SamplingConfig", "apply_overrides", "dump_config", "error_messages",
           "load_config", "save_config", "validate_config"]
