"""The Parquet contract between stages: the columns of every file one stage writes and another reads
(read and written through core/table_io.py, which checks them).

A stage that adds or renames a column changes it here, so the next stage fails loudly at
read time instead of silently computing on the wrong field.
"""
from __future__ import annotations

import pyarrow as pa

_i32 = pa.int32()
_ints = pa.list_(pa.int32())

# resources/data/{task}.parquet: one normalized example per row.
TASK_DATA = pa.schema(
    [
        ("example_id", pa.string()),
        ("text", pa.string()),
        ("text_b", pa.string()),  # second segment of text-pair tasks, null otherwise
        ("label", _i32),
        ("label_name", pa.string()),
    ]
)

# results/.../prompts.parquet: one ICL prompt per evaluated example, tokenized once.
# Spans are [start, end) token indices into input_ids; x_end[i] == y_pos[i].
PROMPTS = pa.schema(
    [
        ("prompt_id", _i32),
        ("example_id", pa.string()),
        ("label", _i32),
        ("demo_ids", pa.list_(pa.string())),
        ("demo_labels", _ints),
        ("text", pa.string()),
        ("input_ids", _ints),
        ("x_start", _ints),
        ("x_end", _ints),
        ("y_pos", _ints),
        ("query_start", _i32),
        ("query_end", _i32),
        ("label_token_ids", _ints),  # token id of each class's label word, by label index
        # Contextual calibration (prompts.content_free; null in sets Table 2 does not read): per content-free
        # query, the tokens its prompt shares with input_ids (the prefix the extraction does not run
        # again) and its tokens after those. That prompt is input_ids[:start] + ids.
        ("content_free", pa.list_(pa.string())),
        ("content_free_start", _ints),
        ("content_free_ids", pa.list_(_ints)),
    ]
)

# results/.../shards/{shard}.parquet: what the model computed for each prompt.
# attention is the last token's attention row, flattened from (n_layers, n_heads, n_tokens).
# Optional captures (null when not configured), flattened in C order:
#   keys, values:           (len(kv_layers), n_kv_heads, len(kv_positions), head_dim) = kv_shape, at each
#                           demonstration's label token + DEMO_OFFSETS (clipped to the prompt)
#   top_positions:          (len(kv_layers), n_heads, k) highest-attention position within [x_i, y_i]
#   top_keys, top_values:   (len(kv_layers), n_heads, k, len(DEMO_OFFSETS), head_dim) = top_shape, at each
#                           top position + DEMO_OFFSETS (clipped to the prompt)
#   hidden:                 (len(hidden_layers), len(hidden_positions), hidden_size) = hidden_shape
#   head_outputs:           (n_layers, n_heads, head_dim), each head's attention output at the last position
# Key/value vectors are kept at these offsets from a position of each demonstration (its label token,
# its attention peak): Section 5.4's probes read -1..+3.
DEMO_OFFSETS = (-1, 0, 1, 2, 3)
_f16s = pa.list_(pa.float16())
SHARD = pa.schema(
    [
        ("prompt_id", _i32),
        ("n_tokens", _i32),
        ("n_layers", _i32),
        ("n_heads", _i32),
        ("label_logits", pa.list_(pa.float32())),
        ("prediction", _i32),
        ("attention", _f16s),
        ("kv_layers", _ints),
        ("kv_positions", _ints),
        ("kv_shape", _ints),
        ("keys", _f16s),
        ("values", _f16s),
        ("top_positions", _ints),
        ("top_shape", _ints),
        ("top_keys", _f16s),
        ("top_values", _f16s),
        ("hidden_layers", _ints),
        ("hidden_positions", _ints),
        ("hidden_shape", _ints),
        ("hidden", _f16s),
        ("head_outputs", _f16s),
        # (len(content_free), n_classes): label logits of each content-free prompt of the prompt row
        ("content_free_logits", pa.list_(pa.float32())),
    ]
)

# results/.../heads.parquet: reconstruction quality of every head and kernel-weight variant.
HEADS = pa.schema(
    [
        ("layer", _i32),
        ("head", _i32),
        ("kernel", pa.string()),
        ("agreement", pa.float64()),
        ("accuracy", pa.float64()),
        ("sink_attention", pa.float64()),  # mean attention of the last token on position 0
        # share of the variance of the head's normalized weights a_i / sum_j a_j over (prompt, demonstration)
        # pairs explained by the demonstration's slot, and by slot x label word (1: a query-free profile)
        ("r2_slot", pa.float64()),
        ("r2_slot_label", pa.float64()),
    ]
)

# results/.../summary.parquet: one row of prompt-level statistics.
SUMMARY = pa.schema(
    [
        ("n_prompts", _i32),
        ("icl_accuracy", pa.float64()),
        ("null_agreement", pa.float64()),
        ("null_accuracy", pa.float64()),
        # the query-free readings of baselines.py, fitted on every prompt (in-sample, like Section 5.2)
        ("recency_agreement", pa.float64()),
        ("uniform_agreement", pa.float64()),
        ("uniform_tie_rate", pa.float64()),
        ("positional_agreement", pa.float64()),
        ("slot_label_agreement", pa.float64()),
    ]
)

# results/.../attention_map.parquet: Fig. 2, last-token attention averaged over prompts on
# aligned prompt columns (long format: one row per layer, head and column).
ATTENTION_MAP = pa.schema(
    [
        ("layer", _i32),
        ("head", _i32),
        ("column", _i32),
        ("segment", pa.string()),
        ("attention", pa.float32()),
    ]
)

# results/.../label_mass.parquet: Section 5.1's number per layer: the share of the last token's
# attention on the label tokens y_i (mean over heads and prompts) against their share of positions.
LABEL_MASS = pa.schema(
    [("layer", _i32), ("label_mass", pa.float64()), ("label_share", pa.float64()), ("ratio", pa.float64())]
)

# results/.../reconstruction.parquet: every head's kernel-regression prediction for every prompt,
# one row per prompt and kernel variant; head_predictions is flattened from (n_layers, n_heads).
RECONSTRUCTION = pa.schema(
    [
        ("prompt_id", _i32),
        ("example_id", pa.string()),
        ("label", _i32),
        ("prediction", _i32),  # the model's own ICL prediction
        ("kernel", pa.string()),
        ("n_layers", _i32),
        ("n_heads", _i32),
        ("head_predictions", pa.list_(pa.int16())),
    ]
)

# results/{model}/{task}/zero_shot.parquet: each test query and pool example run alone (no
# demonstrations): P(o|x) over the label words, and the hidden state of every decoder layer at the
# last input token, flattened from hidden_shape = (n_layers, hidden_size).
ZERO_SHOT = pa.schema(
    [
        ("example_id", pa.string()),
        ("part", pa.string()),  # eval or pool
        ("label", _i32),
        ("probs", pa.list_(pa.float32())),
        ("prediction", _i32),
        ("hidden_shape", _ints),
        ("hidden", _f16s),
        # The full next-token distribution's top k (extraction.zero_shot_top_k), most probable first,
        # and the mass of every other token: the theory's P(o|x) over all observations (Section 5.3).
        ("next_ids", _ints),
        ("next_probs", pa.list_(pa.float32())),
        ("next_rest", pa.float32()),
    ]
)

# results/embeddings/{task}.parquet: sentence-encoder embeddings (L2-normalized) of the same examples.
EMBEDDINGS = pa.schema(
    [("example_id", pa.string()), ("part", pa.string()), ("embedding", pa.list_(pa.float32()))]
)

# results/.../similarity.parquet: Section 5.3, per head the Pearson correlation between the kernel
# weight a_i and the prediction similarity P(o|x_test)^T P(o|x_i) over all (prompt, demo) pairs, with
# P(o|x) over the label words or over the next-token vocabulary (similarity); truncation_bound is
# the most any next-token similarity can fall short of the full-vocabulary one (0 for label words).
SIMILARITY = pa.schema(
    [("layer", _i32), ("head", _i32), ("kernel", pa.string()), ("similarity", pa.string()), ("pearson", pa.float64()),
     ("n_pairs", pa.int64()), ("truncation_bound", pa.float64())]
)

# results/.../query_swap.parquet: per head and kernel reading, the same demonstrations under another
# held-out query (analysis.query_swap_setting): mean total variation distance of the normalized weights
# (weight_shift, 0 = the query does not matter), the share of prompts whose head vote changes, and the
# share whose ICL prediction changes (the same for every head).
QUERY_SWAP = pa.schema(
    [("layer", _i32), ("head", _i32), ("kernel", pa.string()), ("weight_shift", pa.float64()),
     ("vote_change", pa.float64()), ("icl_change", pa.float64()), ("n_prompts", _i32)]
)

# results/.../probes.parquet: Section 5.4, held-out accuracy of ridge probes per head, vector kind
# (key -> the demo's zero-shot prediction, value -> the demo's label) and offset from the peak.
# Balanced accuracy is the mean recall over the classes present in the target; the shuffled control
# is the same probe fitted on the target permuted across demonstration examples.
PROBES = pa.schema(
    [
        ("layer", _i32),
        ("head", _i32),
        ("vector", pa.string()),
        ("offset", _i32),
        ("accuracy", pa.float64()),
        ("majority", pa.float64()),  # accuracy of always answering the most frequent target
        ("balanced_accuracy", pa.float64()),
        ("shuffled_balanced_accuracy", pa.float64()),  # the label-shuffled control's balanced accuracy
        # the same probe fitted on a one-hot of the token id at the same sample position
        ("token_balanced_accuracy", pa.float64()),
        ("chance", pa.float64()),  # balanced accuracy of any constant answer: 1 / classes present in the target
        ("n_samples", _i32),
    ]
)

# results/.../heldout.parquet: Section 5.5, one row per held-out prompt and method; the method's
# choice (head or layer) was made on the select split, whose prompts never appear here.
HELDOUT = pa.schema(
    [
        ("prompt_id", _i32),
        ("example_id", pa.string()),
        ("method", pa.string()),
        ("choice", pa.string()),
        ("select_agreement", pa.float64()),
        ("label", _i32),
        ("icl_prediction", _i32),
        ("null_prediction", _i32),  # the ICL prediction most frequent on the select split
        ("prediction", _i32),
        ("tied", pa.bool_()),  # the method's vote was a tie its tie rule broke (null: not tracked, e.g. heads)
    ]
)

# results/.../calibration.parquet: contextual calibration (Zhao et al. 2021) of each prompt: the label
# distribution of the same prompt with a content-free query (mean over calibration.content_free), and
# the ICL prediction before and after dividing the prompt's label probabilities by it.
CALIBRATION = pa.schema(
    [
        ("prompt_id", _i32),
        ("content_free_probs", pa.list_(pa.float32())),
        ("icl_prediction", _i32),
        ("calibrated_prediction", _i32),
    ]
)

# results/{model}/{task}/table2.parquet: Table 2 over seeds; mean and sd over seeds, bootstrap CI
# over held-out examples of the seed-averaged statistic (ci_*), and a hierarchical one that resamples
# seeds, then examples (seeds_ci_*).
TABLE2 = pa.schema(
    [
        ("method", pa.string()),
        ("metric", pa.string()),
        ("mean", pa.float64()),
        ("sd", pa.float64()),
        ("ci_low", pa.float64()),
        ("ci_high", pa.float64()),
        ("seeds_ci_low", pa.float64()),
        ("seeds_ci_high", pa.float64()),
        ("n_seeds", _i32),
        ("n_heldout", _i32),
        ("choices", pa.string()),
        # metric agreement_gain: the head's agreement minus that of `reference`, the strongest query-free
        # reading, paired per held-out prompt; same_as names an earlier head method with the same head in
        # every seed and the same predictions (one row of evidence, not two).
        ("reference", pa.string()),
        ("same_as", pa.string()),
    ]
)

# results/{model}/{task}/{setting}/health.parquet: per method and class, predictions against gold over
# the held-out prompts of every seed; under_predicted: predicted on less than half its gold share.
HEALTH = pa.schema(
    [
        ("method", pa.string()),
        ("class_index", _i32),
        ("class_name", pa.string()),
        ("predicted", _i32),
        ("gold", _i32),
        ("predicted_share", pa.float64()),
        ("gold_share", pa.float64()),
        ("recall", pa.float64()),
        ("under_predicted", pa.bool_()),
        ("n", _i32),
        ("n_seeds", _i32),
    ]
)

# results/.../seed{seed}/{setting}/interventions.parquet: one row per held-out prompt and edit at the last
# position (family knockout / label_knockout / steer; target top / random / matched / bottom m heads, draw
# of the random and matched ones; heads as "L3 H2, L5 H0"). original_prediction and margins come from the unedited pass;
# margin = label logit of the original prediction minus the best other label's; steer_class is -1
# outside steering.
INTERVENTIONS = pa.schema(
    [
        ("prompt_id", _i32),
        ("example_id", pa.string()),
        ("label", _i32),
        ("family", pa.string()),
        ("target", pa.string()),
        ("m", _i32),
        ("draw", _i32),
        ("heads", pa.string()),
        ("steer_class", _i32),
        ("original_prediction", _i32),
        ("prediction", _i32),
        ("margin_before", pa.float64()),
        ("margin_after", pa.float64()),
        ("attention_mass", pa.float64()),  # the edited heads' mean select-split attention mass (interventions.MASS_OF)
    ]
)

# results/{model}/ablations/{ablation}/prompts.parquet: per held-out prompt of every setting of one
# ablation, through the baseline's chosen head (max kernel).
ABLATION_PROMPTS = pa.schema(
    [
        ("task", pa.string()),
        ("seed", pa.int64()),
        ("setting", pa.string()),
        ("prompt_id", pa.int64()),
        ("example_id", pa.string()),
        ("label", pa.int64()),
        ("icl_prediction", pa.int64()),
        ("head_prediction", pa.int64()),
        ("entropy", pa.float64()),  # normalized entropy of the head's kernel weights (1 = uniform)
        ("demo_similarity", pa.float64()),  # mean encoder cosine of the demonstrations to the test input
        ("n_demos", pa.int64()),
    ]
)

# results/{model}/ablations/{ablation}/summary.parquet: per task, setting and metric, the mean over
# prompts (each averaged over seeds) with a bootstrap 95% CI; "<metric>_shift" rows hold the paired
# difference to the baseline (setting "<a> vs <b>": between two settings, for k).
ABLATION_SUMMARY = pa.schema(
    [
        ("task", pa.string()),
        ("setting", pa.string()),
        ("metric", pa.string()),
        ("mean", pa.float64()),
        ("ci_low", pa.float64()),
        ("ci_high", pa.float64()),
        ("n_prompts", pa.int64()),
        ("n_seeds", pa.int64()),
    ]
)

# results/theory/table.parquet: Theorem 1 on synthetic HMMs, per variant (HMM construction) x kernel x n
# (hmm_seed null = pooled).
THEORY = pa.schema(
    [("variant", pa.string()), ("kernel", pa.string()), ("n_demos", pa.int64()), ("hmm_seed", pa.int64()), ("n_prompts", pa.int64()),
     ("distance_metric", pa.string())]
    + [
        (name, pa.float64())
        for name in (
            "distance_mean", "distance_ci_low", "distance_ci_high", "distance_median",
            "agreement_mean", "agreement_ci_low", "agreement_ci_high",
            "negative_weight_fraction", "negative_denominator_fraction", "true_task_posterior_mean",
            "paper_distance", "paper_agreement",
        )
    ]
)


