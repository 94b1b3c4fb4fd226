"""Layers named relative to a model's depth, so that one config serves models of any depth.

A layer is an int, an index (negative counts back from the last layer: -1 is the last), or a float
in [0, 1], a fraction of depth (0.0 the first layer, 0.5 the middle, 1.0 the last).
"""
from __future__ import annotations

import math


class LayerError(ValueError):
    """A layer that the model does not have; the message names the config key."""


def resolve(spec: int | float, n_layers: int, key: str) -> int:
    """The index of the layer `spec` names in a model of `n_layers` layers."""
    if isinstance(spec, float):
        if not 0.0 <= spec <= 1.0:
            raise LayerError(f"config key '{key}': {spec} is a float, so a fraction of depth, and must lie in [0, 1]")
        return math.floor(spec * (n_layers - 1) + 0.5)
    if not -n_layers <= spec < n_layers:
        raise LayerError(
            f"config key '{key}': layer {spec} does not exist (the model has {n_layers}); "
            "name layers relative to depth (a fraction such as 0.5, or a negative index) to serve models of any depth"
        )
    return spec % n_layers


def resolve_all(specs: list[int | float], n_layers: int, key: str) -> list[int]:
    """The distinct layer indices `specs` name, in increasing order."""
    return sorted({resolve(spec, n_layers, key) for spec in specs})
