"""Query-free readings of an ICL prompt: what a head's vote must beat before it "reads like a kernel".

A kernel regression weighs each demonstration by K(x_test, x_i). The trivial explanations of a head
that agrees with ICL weigh demonstrations without looking at the query at all:

  recency     the last demonstration's label
  uniform     every demonstration weighs 1 (a majority vote over the shown labels); with class-balanced
              demonstrations it ties on most prompts, so its tie rule is chosen on the select split
  positional  one weight per slot 1..k, fitted on the select split
  slot_label  one weight per slot and label word, fitted on the select split (position, recency and
              label-word bias together)

Each is chosen or fitted on Table 2's select split, to the ICL prediction, and then scored on the
held-out prompts exactly as a head is. Plain numpy over (prompts, k) label arrays.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

BASELINES = ("recency", "uniform", "positional", "slot_label")

# The uniform kernel's tie rules, tried in this order on the select split (the first best one wins).
TIE_RULES = ("latest", "majority", "first")
TIE_TEXT = {
    "latest": "ties go to the tied class shown last",
    "majority": "ties go to the select split's most frequent ICL prediction",
    "first": "ties go to the first class",
}

# Ridge on the fitted weights: with 100 select prompts and k x classes weights the conditional logit
# can separate the data, and an unpenalised fit would then run off to infinity.
FIT_RIDGE = 1e-2
_NEWTON_STEPS = 50


@dataclass(frozen=True)
class Baseline:
    """A query-free reading's predictions on every prompt, what was chosen on the select split, and
    (for the uniform kernel) which prompts tie."""

    name: str
    choice: str
    predictions: np.ndarray
    tied: np.ndarray | None = None


def label_counts(demo_labels: np.ndarray, n_classes: int) -> np.ndarray:
    """Demonstrations shown with each label: (prompts, n_classes)."""
    return (np.asarray(demo_labels)[..., None] == np.arange(n_classes)).sum(axis=-2)


def recency(demo_labels: np.ndarray) -> np.ndarray:
    return np.asarray(demo_labels)[:, -1].astype(int)


def uniform_votes(demo_labels: np.ndarray, n_classes: int, tie_rule: str, majority: int) -> tuple[np.ndarray, np.ndarray]:
    """The uniform kernel's prediction under one tie rule, and which prompts tie."""
    demo_labels = np.asarray(demo_labels)
    counts = label_counts(demo_labels, n_classes)
    top = counts == counts.max(axis=1, keepdims=True)
    tied = top.sum(axis=1) > 1
    if tie_rule == "first":
        return np.argmax(top, axis=1), tied
    if tie_rule == "majority":
        return np.where(top[:, majority], majority, np.argmax(top, axis=1)), tied
    # latest: the tied class of the last demonstration whose label is among the tied classes
    k = demo_labels.shape[1]
    shown_top = np.take_along_axis(top, demo_labels, axis=1)  # (prompts, k): is slot i's label a top class
    last = k - 1 - np.argmax(shown_top[:, ::-1], axis=1)
    return demo_labels[np.arange(len(demo_labels)), last], tied


def slot_features(demo_labels: np.ndarray, n_classes: int, by_label: bool) -> np.ndarray:
    """(prompts, classes, features) with logit_c = features_c . theta: positional features are
    [y_i = c] per slot; slot-label features give each (slot, label word) its own weight."""
    demo_labels = np.asarray(demo_labels)
    shown = (demo_labels[:, None, :] == np.arange(n_classes)[None, :, None]).astype(np.float64)  # (P, C, k)
    if not by_label:
        return shown
    eye = np.eye(n_classes)[None, :, :, None]  # (1, C, C', 1): class c only uses the weights of label word c
    return (eye * shown[:, :, None, :]).reshape(len(demo_labels), n_classes, -1)


def fit_conditional_logit(features: np.ndarray, target: np.ndarray, ridge: float = FIT_RIDGE) -> np.ndarray:
    """theta maximising the ridge-penalised likelihood of softmax_c(features_c . theta) for `target`
    (Newton's method: the problem is convex and has at most k x classes weights)."""
    n, n_classes, n_features = features.shape
    theta = np.zeros(n_features)
    one_hot = np.eye(n_classes)[np.asarray(target)]
    for _ in range(_NEWTON_STEPS):
        logits = features @ theta
        p = np.exp(logits - logits.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        mean_feature = np.einsum("pc,pcf->pf", p, features)
        gradient = np.einsum("pc,pcf->f", p - one_hot, features) / n + ridge * theta
        centred = features - mean_feature[:, None, :]
        hessian = np.einsum("pc,pcf,pcg->fg", p, centred, centred) / n + ridge * np.eye(n_features)
        step = np.linalg.solve(hessian, gradient)
        theta -= step
        if np.abs(step).max() < 1e-10:
            break
    return theta


def fitted_votes(features: np.ndarray, theta: np.ndarray) -> np.ndarray:
    return np.argmax(features @ theta, axis=1)


def describe_weights(theta: np.ndarray, k: int) -> str:
    """Slot weights relative to their largest ("slots 1..k: .12 ... 1.00")."""
    profile = np.asarray(theta, dtype=float).reshape(-1, k).mean(axis=0)
    scale = np.abs(profile).max() or 1.0
    return "slot weights " + " ".join(f"{w / scale:+.2f}" for w in profile)


def query_free_baselines(demo_labels: np.ndarray, icl: np.ndarray, select: np.ndarray, n_classes: int) -> list[Baseline]:
    """Every query-free reading of the prompts, chosen or fitted on `select` (row positions) to agree
    with the ICL prediction `icl`."""
    demo_labels = np.asarray(demo_labels)
    icl = np.asarray(icl)
    k = demo_labels.shape[1]
    majority = int(np.bincount(icl[select], minlength=n_classes).argmax())
    rules = {rule: uniform_votes(demo_labels, n_classes, rule, majority) for rule in TIE_RULES}
    rule = max(TIE_RULES, key=lambda r: (np.mean(rules[r][0][select] == icl[select]), -TIE_RULES.index(r)))
    out = [
        Baseline("recency", "the last demonstration's label", recency(demo_labels)),
        Baseline("uniform", TIE_TEXT[rule], *rules[rule]),
    ]
    for name, by_label in (("positional", False), ("slot_label", True)):
        features = slot_features(demo_labels, n_classes, by_label)
        theta = fit_conditional_logit(features[select], icl[select])
        out.append(Baseline(name, describe_weights(theta, k), fitted_votes(features, theta)))
    return out
