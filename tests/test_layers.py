"""Layers named relative to depth: the same config names corresponding layers in models of any depth."""
from __future__ import annotations

import pytest

from workflow_scripts.core import layers
from workflow_scripts.core.layers import LayerError


@pytest.mark.parametrize(
    "spec, n_layers, expected",
    [(0, 30, 0), (29, 30, 29), (-1, 30, 29), (-8, 30, 22), (-8, 18, 10),
     (0.0, 18, 0), (1.0, 18, 17), (0.5, 30, 15), (0.5, 18, 9), (2 / 3, 30, 19), (2 / 3, 18, 11)],
)
def test_resolve(spec, n_layers, expected):
    assert layers.resolve(spec, n_layers, "k") == expected


def test_fractions_map_onto_the_same_relative_depth():
    # The middle-upper third where the paper finds its kernel heads, in SmolLM2 (30) and Gemma-3 (18).
    for n in (18, 28, 30, 32):
        assert abs(layers.resolve(0.6, n, "k") / (n - 1) - 0.6) <= 0.5 / (n - 1)


@pytest.mark.parametrize("spec, message", [(20, "layer 20 does not exist \\(the model has 18\\)"), (-19, "layer -19"),
                                           (1.5, "1.5 is a float, so a fraction of depth, and must lie in \\[0, 1\\]")])
def test_layers_the_model_lacks_name_the_key(spec, message):
    with pytest.raises(LayerError, match=f"config key 'settings.x.hidden_layer': {message}"):
        layers.resolve(spec, 18, "settings.x.hidden_layer")


def test_resolve_all_sorts_and_merges_duplicates():
    assert layers.resolve_all([1.0, 0, -1, 0.0, 3], 4, "k") == [0, 3]
