"""A Theorem 1 study's variants (constructions side by side, hmm.py) and the table rows of each:
what the runner (study.py), the summary (verdicts.py) and the figure (figure.py) select from.
"""
from __future__ import annotations

from typing import Any

# What may differ between the variants of one study: how the HMM is built and which kernels run on it.
VARIANT_KEYS = ("construction", "leakage", "transition_concentration", "emission_concentration", "kernels")


def variant_params(params: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each variant's full parameters: the theory section with the variant's own keys on top.

    Without variants the section is one variant, named after its construction.
    """
    base = {key: value for key, value in params.items() if key != "variants"}
    variants = params.get("variants") or {params["construction"]: {}}
    unknown = sorted({key for overrides in variants.values() for key in overrides} - set(VARIANT_KEYS))
    if unknown:
        raise ValueError(f"config key 'theory.variants': {unknown} cannot differ between variants; expected {VARIANT_KEYS}")
    return {name: {**base, **overrides} for name, overrides in variants.items()}


def variant_rows(rows: list[dict[str, Any]], variant: str) -> list[dict[str, Any]]:
    return [r for r in rows if r["variant"] == variant]


def aggregate_rows(rows: list[dict[str, Any]], kernel: str) -> list[dict[str, Any]]:
    """The pooled-over-seeds rows of one kernel, by n (pass one variant's rows)."""
    return sorted((r for r in rows if r["kernel"] == kernel and r["hmm_seed"] is None), key=lambda r: r["n_demos"])
