"""Evaluation: held-out checker accuracy on built-in worlds (gold metrics, diversity and reports join here)."""
