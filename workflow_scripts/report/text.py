"""Text that several report sections write alike: a prompt set's title, a markdown table cell, a mean
± sd over seeds."""
from __future__ import annotations

import numpy as np


def set_title(model: str, task: str, setting: str) -> str:
    return f"{model} / {task} / {setting}"


def table_cell(text: str) -> str:
    """Text safe inside a markdown table cell (a bare | would split the cell)."""
    return text.replace("|", "\\|")


def mean_sd(values) -> str:
    values = np.asarray(values, dtype=float)
    sd = values.std(ddof=1) if len(values) > 1 else float("nan")
    return f"{values.mean():.3f} ± {sd:.3f}" if len(values) > 1 else f"{values.mean():.3f}"
