"""Test-only components named by ``package.module:Class`` in configs (issue 21, item 7: proof of generality).

Nothing here is registered in vgrl: a run reaches them exactly as an out-of-tree user's components, e.g.
``backbone.name: tests.support.frames_backbone:FramesBackbone``. The repository root is on pytest's path
(``pythonpath`` in pyproject.toml), so ``tests.support`` imports from any test.
"""
