"""Table 2's choice of heads: every head's vote on a prompt set, split into the prompts that choose
the head and those that score it, shared by Table 2 and the causal check."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from workflow_scripts.core.readers import prediction_grid
from workflow_scripts.core.split import select_heldout


def agreement(predictions: np.ndarray, reference: np.ndarray) -> np.ndarray:
    return (predictions == reference[(...,) + (None,) * (predictions.ndim - 1)]).mean(axis=0)


@dataclass(frozen=True)
class HeadSplit:
    """One kernel's head predictions over a prompt set (sorted by prompt id) and Table 2's split of it:
    heads are chosen on `select` and scored on `heldout` (row positions)."""

    ids: np.ndarray
    gold: np.ndarray
    icl: np.ndarray
    grid: np.ndarray  # (prompts, layers, heads)
    select: np.ndarray
    heldout: np.ndarray

    def select_agreement(self) -> np.ndarray:
        """Every head's agreement with ICL on the select split (layers, heads)."""
        return agreement(self.grid[self.select], self.icl[self.select])


def head_split(recon: pa.Table, kernel: str, n_select: int, n_heldout: int, seed: int) -> HeadSplit:
    """The split every consumer of Table 2's head choice (Table 2, the causal check) must share."""
    ids, gold, icl, grid = prediction_grid(recon, kernel)
    return HeadSplit(ids, gold, icl, grid, *select_heldout(gold, n_select, n_heldout, seed))
