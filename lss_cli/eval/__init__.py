"""Evaluation: feature extraction, zero-shot classification and linear probing (docs/method.md §6)."""
