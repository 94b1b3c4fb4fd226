"""Bad input that used to fail late or read as a finding: too few examples for an interval, settings
the model cannot serve (checked before any extraction), a shard that lacks rows, and the ablations
switched off."""
from __future__ import annotations

import copy
import re

import polars as pl
import pytest
import yaml

from workflow_scripts.analysis import table2_rows
from workflow_scripts.core import model_check
from workflow_scripts.core import stats, table_io
from workflow_scripts.core.config import ConfigError, validate_config
from workflow_scripts.report import assemble, headings
from workflow_scripts.report import table2 as table2_report
from workflow_scripts.sources import manifests

from .conftest import REPO


def gain_table(n_heldout: int) -> pl.DataFrame:
    """A Table 2 whose paper head beats recency by +.2 [+.1, +.3] (one seed)."""
    return pl.DataFrame({
        "method": ["icl", "null", "head_max", "head_max"], "metric": ["accuracy", "agreement", "agreement", table2_rows.GAIN],
        "mean": [1.0, 1.0, 1.0, 0.2], "sd": [float("nan")] * 4, "ci_low": [1.0, 1.0, 1.0, 0.1], "ci_high": [1.0, 1.0, 1.0, 0.3],
        "seeds_ci_low": [float("nan")] * 4, "seeds_ci_high": [float("nan")] * 4, "n_seeds": [1] * 4, "n_heldout": [n_heldout] * 4,
        "choices": [None, None, "L1 H0", None], "reference": ["", "", "", "recency"], "same_as": [""] * 4,
    })


def test_too_few_held_out_prompts_draw_no_verdict_and_are_marked():
    small, large = gain_table(1), gain_table(300)
    assert table2_rows.reads_like_kernel(large, "head_max") is True
    assert table2_rows.reads_like_kernel(small, "head_max") is None
    assert table2_report.verdict_sentence(large).startswith("**Reads like a kernel:**")
    assert table2_report.verdict_sentence(small) == (
        "**Too few to read:** 1 held-out prompts per seed (analysis.n_heldout), fewer than 20; an interval over so few "
        "examples can collapse to a point, so no verdict is drawn. Raise the key for numbers to read.")
    lines = "\n".join(table2_report.table2_lines(small, "toy", "enc"))
    assert "1.000 [1.000, 1.000] †" in lines and "too few held-out prompts to read" in lines
    assert "† Fewer than 20 held-out prompts per seed" in lines
    assert "1.000 [1.000, 1.000] †" not in "\n".join(table2_report.table2_lines(large, "toy", "enc"))
    verdicts = "\n".join(assemble.table2_verdicts({"m / toy / random": small}))
    assert "It does in: none. It does not in: none." in verdicts and "Too few held-out prompts to read" in verdicts


def test_the_report_says_at_its_top_when_the_splits_are_too_small():
    study = {"models": ["m"], "tasks": ["t"], "seeds": [0], "settings": ["random"], "n_eval": 2, "k": 4,
             "n_select": 1, "n_heldout": 1, "prepend_bos": False}
    text = "\n".join(headings.header_lines("T", study))
    assert "**Too few examples to read:** analysis.n_select = 1, analysis.n_heldout = 1, fewer than 20." in text
    assert "Too few" not in "\n".join(headings.header_lines("T", {**study, "n_select": 400, "n_heldout": 300}))
    assert stats.too_few(19) and not stats.too_few(20)


def default_config() -> dict:
    return yaml.safe_load((REPO / "config.yaml").read_text())


LLAMA = {"model_type": "llama", "num_hidden_layers": 2, "num_attention_heads": 4}


@pytest.mark.parametrize("change, model_config, message", [
    ({"interventions": {"top_m": [1, 4, 16]}}, LLAMA,
     r"config key 'interventions.top_m': 16 heads and as many controls need 32 heads, but model 'm' has 2 layers x 4 heads = 8; use top_m of at most 4"),
    ({"extraction": {"kv_layers": [0, 5], "hidden_layers": [-1]}, "interventions": {"top_m": [1]}}, LLAMA, r"model 'm': config key 'extraction.kv_layers': layer 5 does not exist \(the model has 2\)"),
    ({"extraction": {"kv_layers": [0.5], "hidden_layers": [-3]}, "interventions": {"top_m": [1]}}, {"model_type": "gpt2", "n_layer": 2, "n_head": 4},
     r"model 'm': config key 'extraction.hidden_layers': layer -3 does not exist \(the model has 2\)"),
])
def test_settings_the_model_cannot_serve_are_named_before_any_extraction(change, model_config, message):
    config = default_config()
    for section, values in change.items():
        config[section].update(values)
    problems = model_check.model_problems(validate_config(config), "m", model_config)
    assert len(problems) == 1 and re.search(message, problems[0]), problems


def test_a_model_that_serves_the_config_has_no_problems():
    config = validate_config(default_config())
    assert model_check.model_problems(config, "m", {"num_hidden_layers": 30, "num_attention_heads": 9}) == []
    assert model_check.model_shape({"text_config": {"num_hidden_layers": 18, "num_attention_heads": 4}}) == (18, 4)


def test_probe_folds_beyond_the_kept_demonstrations_fail_at_parse_time():
    config = default_config()
    config["extraction"]["kv_max_prompts"] = 1
    config["analysis"]["probe_folds"] = 10
    with pytest.raises(ConfigError, match=r"config key 'analysis.probe_folds': 10 folds, but setting 'random' keeps at most 8 "
                                          r"distinct demonstrations for the probes"):
        validate_config(copy.deepcopy(config))
    config["extraction"]["kv_layers"] = []  # no probes
    validate_config(config)


def test_a_shard_that_lacks_rows_is_named_with_its_rebuild_command(tmp_path):
    """A valid Parquet shard with rows gone: the error names that shard and the command that rebuilds it."""
    import pyarrow as pa

    from workflow_scripts.core import readers, tables

    def shard(ids):
        rows = {name: [None] * len(ids) for name in tables.SHARD.names}
        rows.update(prompt_id=ids, n_tokens=[3] * len(ids), n_layers=[1] * len(ids), n_heads=[1] * len(ids),
                    prediction=[0] * len(ids), attention=[[0.1, 0.2, 0.7]] * len(ids), label_logits=[[0.0, 1.0]] * len(ids))
        return rows

    files = [tmp_path / f"{i:03d}.parquet" for i in range(3)]
    for file, ids in zip(files, ([0, 1, 2, 3], [4, 5], [8, 9, 10, 11])):  # shard 001 lost prompts 6 and 7
        table_io.write_table(pa.Table.from_pydict(shard(ids), schema=tables.SHARD), tables.SHARD, file)
    prompts = pa.table({"prompt_id": list(range(12))})
    rows = readers.read_attention_rows(files)
    with pytest.raises(ValueError) as err:
        next(readers.iter_prompts(prompts, rows))
    message = str(err.value)
    assert message.startswith(f"2 prompts have no extraction row (e.g. prompt 6): {files[1]} or {files[2]} lacks them.")
    assert f"snakemake --cores 1 --forcerun {files[1]} {files[2]}" in message and str(files[0]) not in message
    # The last shard cut short: only it is named.
    assert readers.lacking_files({12}, readers.read_attention_rows(files[:1] + files[2:])) == [str(files[2])]


def test_prepare_model_stops_a_study_the_prepared_model_cannot_serve(tmp_path, tiny_llama_dir):
    """A hub or registry model is known only once prepared: prepare_model checks it then, before any extraction."""
    import json


    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({"name": "tiny", "path": str(tiny_llama_dir), "revision": None}))
    config = default_config()
    config["interventions"]["top_m"] = [1, 8]
    with pytest.raises(manifests.ModelError, match=r"'interventions.top_m': 8 heads and as many controls need 16 heads, "
                                                r"but model 'tiny' has 2 layers x 4 heads = 8; use top_m of at most 4"):
        manifests.check_study_fits(validate_config(config), "tiny", manifest)
    config["interventions"]["top_m"] = [1, 4]
    manifests.check_study_fits(validate_config(default_config() | {"interventions": config["interventions"]}), "tiny", manifest)
