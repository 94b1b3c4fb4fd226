"""The causal check, beyond the paper: do the heads whose kernel vote agrees with ICL drive the prediction?

Heads are ranked on Table 2's select split by how often their kernel reconstruction agrees with the
ICL prediction; on its held-out prompts, each intervention edits the LAST prompt position only (the
position whose next-token distribution is the ICL prediction), in the top-m heads and in controls:
m random heads from the same layers (several draws), m random heads matched to the top heads'
attention mass (several draws) and the m heads that agree least.

  knockout        each head's output at the last position replaced by its mean over the prompt set
                  (interventions.knockout: mean) or by zero
  label_knockout  the last token's attention to every demonstration's label token removed, the rest
                  renormalized (the label-anchors test, on the kernel heads)
  steer           the direct test of y_hat = sum_i a_i e(y_i) / sum_i a_i: attention moved from the
                  demonstrations of the predicted class onto those of the runner-up class

Heads that attend more to the demonstrations can move the prediction more whatever their kernel
agreement, so the matched control draws, for each top head, one of the non-top heads nearest to it in
the last token's attention mass (select split): on every demonstration span for the knockouts, on the
predicted class's spans for steering (the mass steering moves).

The engine runs each prompt's prefix once and every edit as a last-token pass over its keys/values
(causal/edits.py, intervene), so the ~70 edits of the default config (3 m x 3 families x top, bottom and
3 draws of each control) cost about as much as one or two more forwards.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from workflow_scripts.analysis.head_choice import head_split
from workflow_scripts.causal.edits import Edit, head_dim, intervene
from workflow_scripts.core import readers, table_io, tables
from workflow_scripts.core.split import ablation_ids
from workflow_scripts.model import loading
from workflow_scripts.sources import manifests

log = logging.getLogger(__name__)


FAMILIES = ("knockout", "label_knockout", "steer")
# The attention mass each family's matched control is matched on: what the edit acts through. The
# knockouts remove a head's whole output (or its label attention), steering moves the mass on the
# predicted class's demonstrations.
MASS_OF = {"knockout": "demos", "label_knockout": "demos", "steer": "predicted"}
# Each matched pick is random among this many nearest non-top heads: draws then differ (a control
# with one possible draw is a single arbitrary head set), while the mass stays close.
MATCH_NEAREST = 3

Head = tuple[int, int]


class InterventionError(ValueError):
    """Interventions that cannot run as configured; the message names the config key."""


@dataclass(frozen=True)
class Target:
    """A set of heads edited together: the top m, a random draw from their layers, a draw matched to
    their attention mass, or the bottom m; edited in `families` only (a matched draw is matched on
    one family's mass)."""

    kind: str
    m: int
    draw: int
    heads: tuple[Head, ...]
    families: tuple[str, ...] = FAMILIES

    @property
    def name(self) -> str:
        return ", ".join(f"L{layer} H{head}" for layer, head in self.heads)


def ranked(scores: np.ndarray) -> list[Head]:
    """Every head, best agreement first (ties by position, so the first is Table 2's head)."""
    return [divmod(int(i), scores.shape[1]) for i in np.argsort(-scores.ravel(), kind="stable")]


def choose_targets(scores: np.ndarray, top_m: list[int], draws: int, seed: int) -> list[Target]:
    """Top-m heads by agreement (ties by position, so top 1 is Table 2's head), m random heads drawn
    one per top head from its layer (never a top head), and the bottom m."""
    n_layers, n_heads = scores.shape
    if max(top_m) * 2 > scores.size:
        raise InterventionError(f"config key 'interventions.top_m': {max(top_m)} heads and as many controls need more than the model's {scores.size}")
    order = ranked(scores)
    targets = []
    for m in sorted(top_m):
        top = order[:m]
        targets.append(Target("top", m, 0, tuple(top)))
        for draw in range(draws):
            rng = np.random.default_rng([seed, m, draw])
            chosen: list[tuple[int, int]] = []
            for layer, _ in top:
                free = [(layer, h) for h in range(n_heads) if (layer, h) not in top and (layer, h) not in chosen]
                if not free:  # the layer's every head is a top head: take one from anywhere
                    free = [h for h in order if h not in top and h not in chosen]
                chosen.append(free[rng.integers(len(free))])
            targets.append(Target("random", m, draw, tuple(sorted(chosen))))
        targets.append(Target("bottom", m, 0, tuple(order[::-1][:m])))
    return targets


def matched_heads(mass: np.ndarray, top: list[Head], nearest: int, rng: np.random.Generator) -> tuple[Head, ...]:
    """One head per top head (in rank order), random among the `nearest` non-top heads not yet chosen
    whose attention mass (layers, heads) is closest to that top head's (ties by position)."""
    chosen: list[Head] = []
    every = [divmod(i, mass.shape[1]) for i in range(mass.size)]
    for head in top:
        free = [h for h in every if h not in top and h not in chosen]
        free.sort(key=lambda h: abs(mass[h] - mass[head]))  # stable: ties keep position order
        chosen.append(free[rng.integers(min(nearest, len(free)))])
    return tuple(sorted(chosen))


def matched_targets(scores: np.ndarray, masses: dict[str, np.ndarray], top_m: list[int], draws: int, seed: int,
                    nearest: int = MATCH_NEAREST) -> list[Target]:
    """Per m and draw, the matched control of every family: m non-top heads matched one by one to the
    top m heads' attention mass of MASS_OF[family] (families that share a mass share the draw)."""
    order = ranked(scores)
    bases = sorted(set(MASS_OF.values()))
    targets = []
    for m in sorted(top_m):
        for draw in range(draws):
            for index, basis in enumerate(bases):
                # Its own stream, so adding the matched control leaves the same-layer draws unchanged.
                rng = np.random.default_rng([seed, m, draw, 1 + index])
                families = tuple(f for f in FAMILIES if MASS_OF[f] == basis)
                targets.append(Target("matched", m, draw, matched_heads(masses[basis], order[:m], nearest, rng), families))
    return targets


def attention_masses(prompts: pa.Table, shards: pa.Table, ids: list[int]) -> dict[str, np.ndarray]:
    """Per head (layers, heads), the last token's attention mass averaged over the prompts `ids`: on
    every demonstration span [x_start_i, y_pos_i] ("demos") and on the spans of the demonstrations of
    the ICL-predicted class ("predicted")."""
    chosen = prompts.filter(pc.is_in(prompts.column("prompt_id"), pa.array(ids, prompts.schema.field("prompt_id").type)))
    totals: dict[str, np.ndarray] = {}
    for prompt in readers.iter_prompts(chosen, shards):
        spans = {"demos": span_positions(prompt["x_start"], prompt["y_pos"], prompt["demo_labels"]),
                 "predicted": span_positions(prompt["x_start"], prompt["y_pos"], prompt["demo_labels"], prompt["prediction"])}
        for basis, positions in spans.items():
            mass = prompt["attention"][..., list(positions)].astype(np.float64).sum(axis=-1)
            totals[basis] = totals.get(basis, 0) + mass
    if not totals:
        raise InterventionError("no select-split prompt to measure the heads' attention mass on (analysis.n_select)")
    return {basis: total / chosen.num_rows for basis, total in totals.items()}


def head_set_mass(masses: dict[str, np.ndarray], family: str, heads: tuple[Head, ...]) -> float:
    """The mean attention mass, of the kind `family` is matched on, of a set of heads."""
    layers, index = np.asarray(heads).T
    return float(masses[MASS_OF[family]][layers, index].mean())


def knockout_values(kind: str, shards: pa.Table, n_layers: int, n_heads: int, head_dim: int) -> np.ndarray:
    """What replaces each head's output in a knockout, (layers, heads, head_dim): its mean output at
    the last position over the prompt set's prompts, or zero."""
    if kind == "zero":
        return np.zeros((n_layers, n_heads, head_dim))
    column = shards.column("head_outputs")
    if column.null_count:
        raise InterventionError("the shards hold no head outputs: set config key 'extraction.head_outputs: true' "
                                "(or interventions.knockout: zero)")
    flat = np.stack([np.asarray(v, dtype=np.float64) for v in column.to_pylist()])
    return flat.mean(axis=0).reshape(n_layers, n_heads, head_dim)


def span_positions(x_start: list[int], y_pos: list[int], demo_labels: list[int], cls: int | None = None) -> tuple[int, ...]:
    """Every position of the demonstrations shown with label `cls` (spans [x_start, y_pos]); of
    every demonstration when `cls` is None."""
    return tuple(p for s, y, c in zip(x_start, y_pos, demo_labels) if cls is None or c == cls for p in range(s, y + 1))


def prompt_edits(prompt: dict, targets: list[Target], knockout: np.ndarray, predicted: int, steer_to: int,
                 fraction: float) -> list[tuple[str, Target, Edit]]:
    """The edits of one prompt: every family of each target (steering only where the prompt shows both
    the predicted and the runner-up class)."""
    move_from = span_positions(prompt["x_start"], prompt["y_pos"], prompt["demo_labels"], predicted)
    move_to = span_positions(prompt["x_start"], prompt["y_pos"], prompt["demo_labels"], steer_to)
    edits = []
    for target in targets:
        layers, heads = np.asarray(target.heads).T
        made = {
            "knockout": Edit(target.heads, replace=knockout[layers, heads]),
            "label_knockout": Edit(target.heads, drop=tuple(prompt["y_pos"])),
            "steer": Edit(target.heads, move_from=move_from, move_to=move_to, move_fraction=fraction) if move_from and move_to else None,
        }
        edits += [(family, target, made[family]) for family in target.families if made[family] is not None]
    return edits


def margin(logits: np.ndarray, cls: int) -> float:
    """How far the label logit of `cls` leads the best other label (negative once another leads)."""
    return float(logits[cls] - np.delete(logits, cls).max())


def prompt_rows(prompt: dict, logits: np.ndarray, edits: list[tuple[str, Target, Edit]], steer_to: int,
                masses: dict[str, np.ndarray]) -> list[dict]:
    """One row per edit of a prompt, from intervene's label logits (row 0 unedited, which defines the
    original prediction and its margin), with the edited heads' select-split attention mass."""
    original = int(np.argmax(logits[0]))
    rows = []
    for (family, target, _), after in zip(edits, logits[1:]):
        rows.append({
            "prompt_id": prompt["prompt_id"], "example_id": prompt["example_id"], "label": prompt["label"],
            "family": family, "target": target.kind, "m": target.m, "draw": target.draw, "heads": target.name,
            "steer_class": steer_to if family == "steer" else -1, "original_prediction": original,
            "prediction": int(np.argmax(after)), "margin_before": margin(logits[0], original),
            "margin_after": margin(after, original), "attention_mass": head_set_mass(masses, family, target.heads),
        })
    return rows


def runner_up(logits: np.ndarray) -> int:
    """The class steering moves attention to: the second-highest label logit of the unedited prompt."""
    return int(np.argsort(-logits, kind="stable")[1])


def run_set(model, prompts: pa.Table, shards: pa.Table, recon: pa.Table, cfg: dict, analysis: dict, split_seed: int) -> dict[str, list]:
    """Columns of INTERVENTIONS for the held-out prompts of one prompt set."""
    split = head_split(recon, cfg["kernel"], analysis["n_select"], analysis["n_heldout"], split_seed)
    scores = split.select_agreement()
    keep = set(ablation_ids(split.ids[split.heldout], split.gold[split.heldout], cfg["prompts"]).tolist())
    n_layers, n_heads = scores.shape
    # Masses on the select split, where the heads are ranked: the held-out prompts stay unseen.
    masses = attention_masses(prompts, shards, split.ids[split.select].tolist())
    targets = choose_targets(scores, cfg["top_m"], cfg["random_draws"], cfg["seed"])
    targets += matched_targets(scores, masses, cfg["top_m"], cfg["random_draws"], cfg["seed"])
    knockout = knockout_values(cfg["knockout"], shards, n_layers, n_heads, head_dim(model.config))
    shard_logits = dict(zip(shards.column("prompt_id").to_pylist(), map(np.asarray, shards.column("label_logits").to_pylist())))
    columns: dict[str, list] = {name: [] for name in tables.INTERVENTIONS.names}
    started = time.perf_counter()
    for prompt in prompts.to_pylist():
        if prompt["prompt_id"] not in keep:
            continue
        # Steering reads the extraction's prediction, so its edits are known before the pass.
        before = shard_logits[prompt["prompt_id"]]
        steer_to = runner_up(before)
        edits = prompt_edits(prompt, targets, knockout, int(np.argmax(before)), steer_to, cfg["steer_fraction"])
        logits = intervene(model, prompt["input_ids"], prompt["label_token_ids"], [e for _, _, e in edits], cfg["batch_size"])
        for row in prompt_rows(prompt, logits, edits, steer_to, masses):
            for name in columns:
                columns[name].append(row[name])
    elapsed = time.perf_counter() - started
    log.info("%d prompts x %d edits in %.0f s (%.2f s per prompt)", len(keep), len(columns["prompt_id"]) // max(len(keep), 1),
             elapsed, elapsed / max(len(keep), 1))
    return columns


def write_interventions(
    prompts_path: str | Path, shard_paths: list[str], recon_path: str | Path, manifest_path: str | Path, cfg: dict,
    analysis: dict, split_seed: int, run: dict, out: str | Path,
) -> None:
    prompts = table_io.read_table(prompts_path, tables.PROMPTS)
    shards = table_io.read_tables(shard_paths, tables.SHARD)
    recon = table_io.read_table(recon_path, tables.RECONSTRUCTION)
    model = loading.prepared_model(manifests.read_manifest(manifest_path), run)[0]
    columns = run_set(model, prompts, shards, recon, cfg, analysis, split_seed)
    table_io.write_table(columns, tables.INTERVENTIONS, out)


def from_snakemake(smk) -> None:
    cfg = {**smk.params.interventions, "batch_size": smk.config["interventions"]["batch_size"]}
    write_interventions(
        smk.input.prompts, list(smk.input.shards), smk.input.reconstruction, smk.input.manifest, cfg,
        smk.params.analysis, smk.params.split_seed, loading.run_settings(smk), smk.output[0],
    )
