"""The exact Bayesian side of the Theorem 1 check: the forward algorithm on an HMM mixture
(hmm.py), which gives P(y_test | prompt) and the posterior over tasks.

Every task is run at once. The delimiter has probability 1 in its slot and sends every task back to
its start state, so the demonstrations are i.i.d. given the task, as the theorem requires.
"""
from __future__ import annotations

import numpy as np

from workflow_scripts.core import stats
from workflow_scripts.theory.hmm import DELIMITER, HmmMixture, PromptBatch


def start_forward(mixture: HmmMixture, batch_shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Forward state before the first token: each task sits in its start state, log-weight = prior."""
    alpha = np.zeros(batch_shape + (mixture.n_tasks, mixture.n_states))
    alpha[..., np.arange(mixture.n_tasks), mixture.start_states] = 1.0
    log_weight = np.broadcast_to(np.log(mixture.task_prior), batch_shape + (mixture.n_tasks,)).copy()
    return alpha, log_weight


def advance_forward(
    mixture: HmmMixture, alpha: np.ndarray, log_weight: np.ndarray, token_ids: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Run the rescaled forward recursion over tokens, for every task at once.

    alpha (..., n_tasks, S) is the normalised filtered state distribution; log_weight (..., n_tasks)
    accumulates log prior + log P(tokens | task). token_ids (..., length) is shared across tasks.
    Normalising at every step keeps alpha O(1), so hundreds of demonstrations cannot underflow.
    """
    alpha = alpha.copy()
    log_weight = log_weight.copy()
    reset = np.zeros((mixture.n_tasks, mixture.n_states))
    reset[np.arange(mixture.n_tasks), mixture.start_states] = 1.0
    for position in range(token_ids.shape[-1]):
        token = token_ids[..., position]
        is_delimiter = (token == DELIMITER)[..., None, None]
        emitted = (alpha @ mixture.transition) * np.moveaxis(mixture.emission[:, token], 0, -1)[..., None, :]
        scale = emitted.sum(axis=-1)
        with np.errstate(divide="ignore", invalid="ignore"):
            stepped = emitted / scale[..., None]
            step_log = np.log(scale)
        # The delimiter has probability 1 in its slot and sends every task back to its start state.
        alpha = np.where(is_delimiter, reset, stepped)
        log_weight = log_weight + np.where(is_delimiter[..., 0], 0.0, step_log)
    return alpha, log_weight


def predict_label(mixture: HmmMixture, alpha: np.ndarray, log_weight: np.ndarray) -> np.ndarray:
    """P(next label | tokens so far) under the mixture: task posterior times each task's prediction."""
    task_posterior = stats.softmax(log_weight, axis=-1)
    per_task = (alpha @ mixture.transition) @ mixture.emission[:, mixture.label_ids]
    return np.einsum("...t,...tl->...l", task_posterior, per_task)


def prompt_label_posterior(mixture: HmmMixture, token_ids: np.ndarray) -> np.ndarray:
    """Exact P(y_test | prompt) for prompts given as token ids (..., length) ending with x_test."""
    alpha, log_weight = start_forward(mixture, token_ids.shape[:-1])
    alpha, log_weight = advance_forward(mixture, alpha, log_weight, token_ids)
    return predict_label(mixture, alpha, log_weight)


def posteriors_over_n(
    mixture: HmmMixture, prompts: PromptBatch, n_grid: list[int]
) -> tuple[np.ndarray, np.ndarray]:
    """Posterior over labels and the posterior mass of the true task, for each n in n_grid.

    One forward pass over all demonstrations; at each n on the grid the recursion branches into
    x_test, so the prompt for n is exactly the first n demonstrations followed by x_test.
    Returns (P, len(n_grid), n_labels) and (P, len(n_grid)).
    """
    n_prompts = prompts.tasks.shape[0]
    alpha, log_weight = start_forward(mixture, (n_prompts,))
    label_posterior = np.empty((n_prompts, len(n_grid), mixture.n_labels))
    true_task_mass = np.empty((n_prompts, len(n_grid)))
    done = 0
    for column, n in enumerate(n_grid):
        demo_ids = np.concatenate(
            [
                prompts.x_demos[:, done:n],
                1 + prompts.y_demos[:, done:n, None],
                np.full((n_prompts, n - done, 1), DELIMITER),
            ],
            axis=2,
        ).reshape(n_prompts, -1)
        alpha, log_weight = advance_forward(mixture, alpha, log_weight, demo_ids)
        done = n
        test_alpha, test_log_weight = advance_forward(mixture, alpha, log_weight, prompts.x_test)
        label_posterior[:, column] = predict_label(mixture, test_alpha, test_log_weight)
        true_task_mass[:, column] = stats.softmax(test_log_weight, axis=-1)[np.arange(n_prompts), prompts.tasks]
    return label_posterior, true_task_mass
