"""The two metrics of the paper's Table 3, per prompt: the distance between the kernel-regression
vector and the exact posterior, and whether both put their largest entry on the same label.

Distance: L1 between the kernel-regression vector and the posterior (twice the total variation
when both are distributions); the paper's n = 1 value 1.322 ~ 2 (1 - 1/3) fits L1 with ~3 labels.
"""
from __future__ import annotations

import numpy as np

DISTANCE_NAME = "L1"
TABLE3_METRICS = ("distance", "agreement")


def l1_distance(prediction: np.ndarray, posterior: np.ndarray) -> np.ndarray:
    """sum_y |prediction - posterior| over the last axis (infinite when sum K was exactly 0)."""
    distance = np.abs(prediction - posterior).sum(axis=-1)
    return np.where(np.isfinite(distance), distance, np.inf)


def argmax_agreement(prediction: np.ndarray, posterior: np.ndarray) -> np.ndarray:
    """1.0 where both vectors put their largest entry on the same label (NaN predictions disagree)."""
    agree = np.nanargmax(np.where(np.isfinite(prediction), prediction, -np.inf), axis=-1) == posterior.argmax(axis=-1)
    return np.where(np.isfinite(prediction).all(axis=-1), agree, False).astype(float)
