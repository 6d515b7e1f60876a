"""Datasets read from disk: preference pairs (:mod:`vgrl.data.preferences`, format in docs/preferences.md)."""
