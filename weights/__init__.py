"""Bundled SE4Lip weights (data files only); see MODEL_CARD.md."""
