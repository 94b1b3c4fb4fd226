"""Demonstrations chosen by similarity to the test input (Section 4.2: retrieval narrows the kernel).

Similarities come from a sentence encoder or from the studied model's own hidden state of each input
run alone; the pool is ranked by cosine similarity to the query. Class balance is a choice: balanced
retrieval takes the top examples within each class (so label frequencies match random balanced
sampling and only the inputs change), pure top-k ignores labels (and may show one class only).
"""
from __future__ import annotations

import numpy as np

from workflow_scripts.core.split import per_class_counts


def top_k(
    similarity: np.ndarray, pool_labels: np.ndarray, k: int, n_classes: int, most_similar: bool, balanced: bool
) -> np.ndarray:
    """Pool indices of the k most (or least) similar examples, least similar first, so the most
    similar demonstration sits next to the query (as KATE orders them). Ties break by pool order."""
    score = similarity if most_similar else -similarity
    ranked = np.lexsort((np.arange(len(score)), -score))  # best first, stable
    if not balanced:
        chosen = ranked[:k]
    else:
        # classes whose best example scores highest take the remainder slots
        best = [next((i for i in ranked if pool_labels[i] == c), None) for c in range(n_classes)]
        order = sorted(range(n_classes), key=lambda c: np.inf if best[c] is None else -score[best[c]])
        counts = dict(zip(order, per_class_counts(k, n_classes)))
        chosen = np.concatenate([[i for i in ranked if pool_labels[i] == c][: counts[c]] for c in range(n_classes)]).astype(int)
        if len(chosen) < k:
            raise ValueError(f"balanced retrieval needs {k} demonstrations, the pool's classes hold only {len(chosen)}")
        chosen = chosen[np.lexsort((chosen, -score[chosen]))]
    return chosen[::-1]
