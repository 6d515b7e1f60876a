import os

import pytest
import torch

# Deterministic fp32 CPU mode for every test: fixed thread count, deterministic algorithms.
torch.use_deterministic_algorithms(True)
torch.set_num_threads(int(os.environ.get("VGRL_TEST_THREADS", "2")))


@pytest.fixture(scope="session")
def tiny_backbones():
    """Built once per session: name -> tiny backbone (random init, seeded)."""
    from vgrl.backbones.flow import FlowBackbone
    from vgrl.backbones.sd import SDBackbone

    return {
        "sd-eps": SDBackbone.tiny(prediction="epsilon"),
        "sd-v": SDBackbone.tiny(prediction="v"),
        "sd-pixel": SDBackbone.tiny(prediction="epsilon", vae=False),
        "flow": FlowBackbone.tiny(),
        "flow-pixel": FlowBackbone.tiny(vae=False),
    }
