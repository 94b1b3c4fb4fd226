"""Deterministic perturbations of prompts for the Section 4.2 ablations: typo noise on inputs and
alternative label formats."""
from __future__ import annotations

import string

import numpy as np

LETTERS = np.array(list(string.ascii_lowercase))


OPS = ("swap", "drop", "insert")


def typo_plan(n_chars: int, rate: float, rng: np.random.Generator) -> list[tuple[int, str, str]]:
    """(position, operation, letter) edits: each character is hit with probability `rate` and gets one
    of swap (with the next character), drop, or insert (a random letter after it), uniformly."""
    hits = np.flatnonzero(rng.random(n_chars) < rate)
    ops = rng.integers(0, len(OPS), len(hits))
    letters = LETTERS[rng.integers(0, len(LETTERS), len(hits))]
    return [(int(i), OPS[o], str(c)) for i, o, c in zip(hits, ops, letters)]


def apply_typos(text: str, plan: list[tuple[int, str, str]]) -> str:
    """Apply edits left to right; a swap consumes the next character (an edit planned there is skipped),
    and a swap of the last character inserts instead."""
    edits = {i: (op, letter) for i, op, letter in plan}
    out: list[str] = []
    i = 0
    while i < len(text):
        op, letter = edits.get(i, (None, ""))
        if op == "swap" and i + 1 < len(text):
            out += [text[i + 1], text[i]]
            i += 1
        elif op in ("swap", "insert"):
            out += [text[i], letter]
        elif op != "drop":
            out.append(text[i])
        i += 1
    return "".join(out)


def typos(text: str, rate: float, rng: np.random.Generator) -> str:
    """Typo noise at `rate` per character; the same text, rate and rng state give the same output."""
    return apply_typos(text, typo_plan(len(text), rate, rng))


def shown_label_words(kind: str, words: list[str], symbols: list[str], random_words: list[str]) -> list[str]:
    """The word shown for each class under a label format.

    configured: the task's words; permuted: the same words, class c shown with class c+1's word (a
    derangement, so no class keeps its word); symbols / words: neutral symbols or unrelated English
    words, in order. `random` (random demonstration labels) keeps the configured words.
    """
    n = len(words)
    if kind in ("configured", "random"):
        return list(words)
    if kind == "permuted":
        return [words[(c + 1) % n] for c in range(n)]
    pool = {"symbols": symbols, "words": random_words}[kind]
    if len(pool) < n:
        raise ValueError(f"label format {kind!r} needs {n} words, the setting lists {len(pool)}: {pool}")
    return list(pool[:n])
