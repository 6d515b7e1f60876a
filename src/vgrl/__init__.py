"""vgrl: reinforcement learning and preference optimisation for visual generative models.

Importing the package is cheap (no torch): heavy modules load on first use.
"""

__version__ = "0.1.0"
