import os

import pytest
import torch

# Deterministic fp32 CPU mode for every test: fixed thread count, deterministic algorithms.
torch.use_deterministic_algorithms(True)
torch.set_num_threads(int(os.environ.get("VGRL_TEST_THREADS", "2")))


@pytest.fixture(scope="session")
def tiny_backbones():
    """Built once per session: test key (``sd-eps``, ``flow``, ...) -> tiny backbone (random init, seeded)."""
    from tests.backbone_variants import backbone_variants
    from vgrl import registry

    return {key: registry.resolve("backbones", name).tiny(**kwargs)
            for key, (name, kwargs) in backbone_variants().items()}
