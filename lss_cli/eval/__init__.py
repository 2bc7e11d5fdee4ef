"""Evaluation: feature extraction, zero-shot classification and linear probing (SPEC §3.5)."""
