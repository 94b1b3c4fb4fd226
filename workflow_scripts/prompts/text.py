"""A prompt as text and tokens: the template rendered around demonstrations and a query, tokenized
once, with the token position of every span (each x_i, each label token y_i, the query).

Later stages never re-tokenize: every position they need is recorded here from the tokenizer's
character offsets. Nothing here imports torch.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from workflow_scripts.prompts import perturb


class PromptError(ValueError):
    """Prompts that cannot be built as configured; the message names the key and the numbers."""


@dataclass(frozen=True)
class Rendered:
    text: str
    x_chars: list[tuple[int, int]]  # each demonstration's input part
    y_chars: list[tuple[int, int]]  # each demonstration's label word
    query_char: int


def render(template: dict, demos: list[tuple[dict, str]], query: dict) -> Rendered:
    """Write demonstrations (fields, label word) and the query into one prompt, noting char spans."""
    text = template["prefix"]
    x_chars, y_chars = [], []
    for fields, word in demos:
        start = len(text)
        text += template["input"].format(**fields)
        x_chars.append((start, len(text)))
        before, after = template["output"].split("{label}")
        text += before
        y_chars.append((len(text), len(text) + len(word)))
        text += word + after + template["separator"]
    query_char = len(text)
    text += template["input"].format(**query)
    return Rendered(text, x_chars, y_chars, query_char)


def _token_at(offsets: np.ndarray, char: int) -> int:
    """The first token that ends after `char` (tokens may drop leading whitespace from offsets)."""
    real = offsets[:, 1] > offsets[:, 0]
    return int(np.flatnonzero(real & (offsets[:, 1] > char))[0])


def tokenize(tokenizer, rendered: Rendered, label_words: list[str]) -> dict:
    """Token ids and the token positions of every span; each label word must be exactly one token."""
    enc = tokenizer(rendered.text, return_offsets_mapping=True, add_special_tokens=True)
    ids = np.asarray(enc["input_ids"], dtype=np.int32)
    offsets = np.asarray(enc["offset_mapping"], dtype=np.int64)
    x_start, y_pos = [], []
    for (xs, _), (ys, ye), word in zip(rendered.x_chars, rendered.y_chars, label_words):
        overlapping = np.flatnonzero((offsets[:, 0] < ye) & (offsets[:, 1] > ys))
        pieces = [tokenizer.decode([int(ids[i])]) for i in overlapping]
        if len(overlapping) != 1 or pieces[0].strip() != word.strip():
            raise PromptError(
                f"label word {word!r} is not one token in context: it tokenizes as {pieces}; "
                "choose another word in the task's label_words (or change template.output)"
            )
        x_start.append(_token_at(offsets, xs))
        y_pos.append(int(overlapping[0]))
    return {
        "input_ids": ids.tolist(),
        "x_start": x_start,
        "x_end": list(y_pos),
        "y_pos": y_pos,
        "query_start": _token_at(offsets, rendered.query_char),
        "query_end": len(ids),
    }


def label_token_ids(tokenizer, template: dict, words: list[str], example: dict) -> list[int]:
    """Token id of each label word as it appears in context, checked to be one token and distinct."""
    ids = []
    for word in words:
        rendered = render(template, [(example, word)], example)
        spans = tokenize(tokenizer, rendered, [word])
        ids.append(spans["input_ids"][spans["y_pos"][0]])
    if len(set(ids)) != len(ids):
        raise PromptError(f"label words {words} map to the same token ids {ids}; they must be distinct")
    return ids


def fields(row: Mapping[str, Any]) -> dict:
    """An example's template fields (from its TASK_DATA row): its text, and text_b for a text pair."""
    fields = {"text": row["text"]}
    if row.get("text_b") is not None:
        fields["text_b"] = row["text_b"]
    return fields


def perturbed(row: Mapping[str, Any], setting: dict, rng: np.random.Generator) -> dict:
    """An example's template fields with typo noise at the setting's rate (none at rate 0)."""
    values = fields(row)
    if not setting["typo_rate"]:
        return values
    return {name: perturb.typos(text, setting["typo_rate"], rng) for name, text in values.items()}
