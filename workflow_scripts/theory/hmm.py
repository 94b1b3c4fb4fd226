"""The random HMM mixtures of the Theorem 1 check (paper Appendix C, Table 3), and sampling from them.

Construction (what the theorem assumes, made concrete). The paper gives only "8 tasks, 80 states,
100 observations", so two readings are built, and a study reports several side by side (variants):
- shared: one HMM for all tasks, transition T (S x S) and emissions drawn from Dirichlet priors. A
  task differs only in its start state s_task (distinct per task).
- block: S / n_tasks states per task (80 / 8 = 10), each task its own small HMM inside the unified
  one: T is block-diagonal, the start state lies in the task's block, and a share `leakage` of every
  row's mass goes to the other blocks. Low Dirichlet concentrations give sparse rows (near-
  deterministic chains and emissions).
In both the prior over tasks is uniform.
- Observations: id 0 is the delimiter, ids 1..n_labels are the label tokens, the rest are input
  tokens. The prompt format is fixed ([x (x_length input tokens)] [y (one label)] [delimiter]), so
  each slot emits from its own sub-vocabulary: input slots from the input rows of the emission, the
  label slot from the label rows, each renormalised per state. The delimiter is emitted with
  probability 1 and resets the hidden state to the task's start state, which makes the
  demonstrations i.i.d. given the task, as the theorem requires.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

DELIMITER = 0
CONSTRUCTIONS = ("shared", "block")


# ----------------------------------------------------------------------------------------- the HMM


@dataclass(frozen=True)
class HmmMixture:
    """A task mixture over one HMM; tasks differ only in the start (and reset) state."""

    transition: np.ndarray  # (S, S), rows sum to 1
    emission: np.ndarray  # (S, V); delimiter column 0, label and input columns each sum to 1 per row
    start_states: np.ndarray  # (n_tasks,) distinct state indices
    task_prior: np.ndarray  # (n_tasks,)
    n_labels: int

    @property
    def n_states(self) -> int:
        return self.transition.shape[0]

    @property
    def n_tasks(self) -> int:
        return self.start_states.shape[0]

    @property
    def label_ids(self) -> np.ndarray:
        return np.arange(1, 1 + self.n_labels)

    @property
    def input_ids(self) -> np.ndarray:
        return np.arange(1 + self.n_labels, self.emission.shape[1])


def random_hmm_mixture(
    seed: int,
    n_tasks: int,
    n_states: int,
    n_observations: int,
    n_labels: int,
    transition_concentration: float,
    emission_concentration: float,
    construction: str = "shared",
    leakage: float = 0.0,
) -> HmmMixture:
    """Draw a mixture from a seed: Dirichlet rows for T and for each slot's emission.

    The draws come in the same order for every construction (T, label rows, input rows, start
    states), so the shared construction gives the same HMM as before constructions existed.
    """
    if n_tasks > n_states:
        raise ValueError(f"n_tasks ({n_tasks}) must not exceed n_states ({n_states}): start states are distinct")
    n_inputs = n_observations - 1 - n_labels
    if n_labels < 2 or n_inputs < 1:
        raise ValueError(
            f"n_observations ({n_observations}) must leave room for the delimiter, n_labels ({n_labels} >= 2) "
            "and at least one input token"
        )
    if construction not in CONSTRUCTIONS:
        raise ValueError(f"config key 'theory.construction': {construction!r}; expected one of {CONSTRUCTIONS}")
    if construction == "shared" and leakage != 0:
        raise ValueError(f"config key 'theory.leakage': {leakage} needs construction: block (shared has no blocks)")
    rng = np.random.default_rng(seed)
    if construction == "block":
        transition = block_transition(rng, n_tasks, n_states, transition_concentration, leakage)
    else:
        transition = rng.dirichlet(np.full(n_states, transition_concentration), size=n_states)
    labels = rng.dirichlet(np.full(n_labels, emission_concentration), size=n_states)
    inputs = rng.dirichlet(np.full(n_inputs, emission_concentration), size=n_states)
    emission = np.concatenate([np.zeros((n_states, 1)), labels, inputs], axis=1)
    if construction == "block":
        size = n_states // n_tasks
        start_states = np.arange(n_tasks) * size + rng.integers(0, size, size=n_tasks)
    else:
        start_states = rng.choice(n_states, size=n_tasks, replace=False)
    return HmmMixture(transition, emission, start_states, np.full(n_tasks, 1.0 / n_tasks), n_labels)


def task_blocks(n_tasks: int, n_states: int) -> np.ndarray:
    """The task (block) each state belongs to in the block construction: (S,)."""
    if n_tasks < 1 or n_states % n_tasks:
        raise ValueError(
            f"config keys 'theory.n_states' ({n_states}) and 'theory.n_tasks' ({n_tasks}): the block "
            "construction needs n_states divisible by n_tasks (equal blocks, one per task)"
        )
    return np.repeat(np.arange(n_tasks), n_states // n_tasks)


def block_transition(
    rng: np.random.Generator, n_tasks: int, n_states: int, concentration: float, leakage: float
) -> np.ndarray:
    """Block-diagonal T: each row Dirichlet inside its block (1 - leakage) and outside it (leakage).

    Both parts are Dirichlet draws rescaled to their share, so the mass leaving a block is exactly
    `leakage` in every row, however sparse the draws.
    """
    if not 0 <= leakage < 1:
        raise ValueError(f"config key 'theory.leakage': {leakage}; expected a share in [0, 1)")
    if leakage > 0 and n_tasks < 2:
        raise ValueError(f"config key 'theory.leakage': {leakage} needs n_tasks >= 2 (no other block to leak to)")
    block = task_blocks(n_tasks, n_states)
    inside = block[:, None] == block[None, :]
    size = n_states // n_tasks
    transition = np.zeros((n_states, n_states))
    transition[inside] = ((1.0 - leakage) * rng.dirichlet(np.full(size, concentration), size=n_states)).ravel()
    if leakage > 0:
        outside = rng.dirichlet(np.full(n_states - size, concentration), size=n_states)
        transition[~inside] = (leakage * outside).ravel()
    return transition


# ---------------------------------------------------------------------------------------- sampling


def random_stream(seed: int, purpose: str) -> np.random.Generator:
    """Independent, reproducible random streams per HMM seed and purpose."""
    return np.random.default_rng([seed, zlib.crc32(purpose.encode())])


def _sample_categorical(probabilities: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One draw per row of a (m, k) probability matrix, vectorised by inverse CDF."""
    cdf = np.cumsum(probabilities, axis=1)
    draws = (rng.random(probabilities.shape[0])[:, None] * cdf[:, -1:] > cdf).sum(axis=1)
    return np.minimum(draws, probabilities.shape[1] - 1)


def sample_segments(
    mixture: HmmMixture, tasks: np.ndarray, x_length: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Sample one (x, y) segment per entry of `tasks`, each starting from its task's start state.

    Returns x as observation ids (m, x_length) and y as label indices 0..n_labels-1 (m,).
    """
    state = mixture.start_states[tasks]
    input_probs = mixture.emission[:, mixture.input_ids]
    label_probs = mixture.emission[:, mixture.label_ids]
    x = np.empty((tasks.shape[0], x_length), dtype=np.int64)
    for position in range(x_length):
        state = _sample_categorical(mixture.transition[state], rng)
        x[:, position] = mixture.input_ids[_sample_categorical(input_probs[state], rng)]
    state = _sample_categorical(mixture.transition[state], rng)
    y = _sample_categorical(label_probs[state], rng)
    return x, y


@dataclass(frozen=True)
class PromptBatch:
    """Prompts [x_1 y_1 delim ... x_n y_n delim x_test], all drawn from one task each."""

    tasks: np.ndarray  # (P,)
    x_demos: np.ndarray  # (P, n_max, x_length) observation ids
    y_demos: np.ndarray  # (P, n_max) label indices
    x_test: np.ndarray  # (P, x_length) observation ids


def sample_prompts(
    mixture: HmmMixture, n_prompts: int, n_max: int, x_length: int, rng: np.random.Generator
) -> PromptBatch:
    """Draw the task from the prior, then n_max demonstrations and a test input from that task."""
    tasks = rng.choice(mixture.n_tasks, size=n_prompts, p=mixture.task_prior)
    x, y = sample_segments(mixture, np.repeat(tasks, n_max + 1), x_length, rng)
    x = x.reshape(n_prompts, n_max + 1, x_length)
    y = y.reshape(n_prompts, n_max + 1)
    return PromptBatch(tasks, x[:, :n_max], y[:, :n_max], x[:, n_max])


def prompt_token_ids(x_demos: np.ndarray, y_demos: np.ndarray, x_test: np.ndarray) -> np.ndarray:
    """Flatten one prompt into observation ids: x_1 y_1 delim ... x_n y_n delim x_test."""
    segments = [np.concatenate([x, [1 + y, DELIMITER]]) for x, y in zip(x_demos, y_demos)]
    return np.concatenate(segments + [np.asarray(x_test)]).astype(np.int64)


def sample_pretraining_inputs(
    mixture: HmmMixture, n_samples: int, x_length: int, rng: np.random.Generator
) -> np.ndarray:
    """Inputs x as the pretraining mixture produces them (task from the prior, then its chain)."""
    tasks = rng.choice(mixture.n_tasks, size=n_samples, p=mixture.task_prior)
    return sample_segments(mixture, tasks, x_length, rng)[0]


def sample_uniform_inputs(
    mixture: HmmMixture, n_samples: int, x_length: int, rng: np.random.Generator
) -> np.ndarray:
    """Inputs with every token uniform over the input vocabulary (estimates the unweighted M)."""
    return rng.choice(mixture.input_ids, size=(n_samples, x_length))
