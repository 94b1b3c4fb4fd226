"""Edits at the last prompt token and the causal check of the kernel heads (beyond the paper)."""
