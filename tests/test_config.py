"""Tests of config validation: schema defaults, schema errors and cross-reference checks."""
from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import yaml

from workflow_scripts.core import config as cfg_mod
from workflow_scripts.core.config import ConfigError, validate_config

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def config(tmp_path) -> dict:
    """A small valid config: one local model directory and one local csv task."""
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "config.json").write_text("{}")
    # config validation looks for tokenizer files and weights (their contents are not read)
    for name in ("tokenizer.json", "model.safetensors"):
        (model_dir / name).write_text("")
    data = tmp_path / "reviews.csv"
    data.write_text("text,label\ngood film,1\nbad film,0\n")
    return {
        "study": {"models": ["tiny"], "tasks": ["reviews"], "seeds": [0, 1]},
        "models": {"tiny": {"source": "local", "path": str(model_dir)}},
        "tasks": {
            "reviews": {
                "source": "local",
                "path": str(data),
                "columns": {"text": "text", "label": "label"},
                "classes": ["negative", "positive"],
                "label_map": {"0": "negative", "1": "positive"},
                "template": {"input": "Review: {text}\nSentiment:"},
            }
        },
    }


def errors_of(config: dict) -> str:
    with pytest.raises(ConfigError) as info:
        validate_config(config)
    return str(info.value)


def test_valid_config_gets_defaults(config):
    out = validate_config(config)
    assert out is config  # validated in place
    assert config["prompts"]["k"] == 8
    assert config["prompts"]["n_eval"] == 100
    assert config["prompts"]["n_dev"] == 0
    assert config["settings"]["random"]["selection"] == "random"
    assert config["settings"]["random"]["labels"] == "configured" and config["settings"]["random"]["queries"] == "all"
    assert config["study"]["settings"] == ["random"]
    assert config["ablations"] == {}
    task = config["tasks"]["reviews"]
    assert task["template"] == {
        "input": "Review: {text}\nSentiment:", "prefix": "", "output": " {label}", "separator": "\n\n"
    }
    assert task["encoding"] == "utf-8-sig"
    assert config["models"]["tiny"]["trust_remote_code"] is False
    assert config["extraction"]["shard_size"] == 50
    assert config["analysis"]["resample_length"] == 30
    assert config["report"]["dpi"] == 110


def test_defaults_are_not_shared_between_configs(config):
    other = copy.deepcopy(config)
    validate_config(config)
    validate_config(other)
    config["prompts"]["k"] = 3
    config["settings"]["random"]["selection"] = "changed"
    assert other["prompts"]["k"] == 8
    assert other["settings"]["random"]["selection"] == "random"


def test_given_values_are_kept(config):
    config["prompts"] = {"k": 4}
    validate_config(config)
    assert config["prompts"]["k"] == 4
    assert config["prompts"]["n_eval"] == 100


def test_unknown_top_level_key(config):
    config["promts"] = {"k": 4}
    msg = errors_of(config)
    assert "config key '<top level>'" in msg
    assert "promts" in msg


def test_unknown_nested_key(config):
    config["prompts"] = {"kk": 4}
    msg = errors_of(config)
    assert "config key 'prompts'" in msg
    assert "kk" in msg
    assert "allowed keys" in msg and "'n_eval'" in msg


def test_unknown_key_inside_named_task(config):
    config["tasks"]["reviews"]["template"]["suffix"] = "!"
    msg = errors_of(config)
    assert "config key 'tasks.reviews.template'" in msg
    assert "suffix" in msg


def test_wrong_type_names_the_key(config):
    config["prompts"] = {"k": "eight"}
    msg = errors_of(config)
    assert "config key 'prompts.k'" in msg
    assert "eight" in msg


def test_bad_task_name_pattern(config):
    config["tasks"]["bad name"] = config["tasks"]["reviews"]
    msg = errors_of(config)
    assert "config key 'tasks'" in msg and "'bad name'" in msg


def test_study_names_undefined_task(config):
    config["study"]["tasks"] = ["reviews", "nope"]
    msg = errors_of(config)
    assert "config key 'study.tasks'" in msg
    assert "'nope'" in msg
    assert "reviews" in msg  # lists what is defined


def test_study_names_undefined_setting(config):
    config["study"]["settings"] = ["retrieval"]
    msg = errors_of(config)
    assert "config key 'study.settings'" in msg and "'retrieval'" in msg


def test_label_map_value_not_in_classes(config):
    config["tasks"]["reviews"]["label_map"]["2"] = "neutral"
    msg = errors_of(config)
    assert "config key 'tasks.reviews.label_map.2'" in msg
    assert "'neutral'" in msg


def test_class_without_raw_label(config):
    config["tasks"]["reviews"]["classes"] = ["negative", "positive", "neutral"]
    msg = errors_of(config)
    assert "config key 'tasks.reviews.label_map'" in msg and "neutral" in msg


def test_duplicate_label_words(config):
    config["tasks"]["reviews"]["label_words"] = {"negative": "good", "positive": "good"}
    msg = errors_of(config)
    assert "config key 'tasks.reviews.label_words'" in msg
    assert "distinct" in msg


def test_label_word_equal_to_other_class_name(config):
    # 'positive' keeps its class name as word, so mapping 'negative' to 'positive' collides.
    config["tasks"]["reviews"]["label_words"] = {"negative": "positive"}
    assert "distinct" in errors_of(config)


def test_label_words_for_unknown_class(config):
    config["tasks"]["reviews"]["label_words"] = {"neutral": "meh"}
    msg = errors_of(config)
    assert "config key 'tasks.reviews.label_words.neutral'" in msg


def test_local_task_file_missing(config, tmp_path):
    missing = tmp_path / "absent.csv"
    config["tasks"]["reviews"]["path"] = str(missing)
    msg = errors_of(config)
    assert "config key 'tasks.reviews.path'" in msg
    assert str(missing) in msg


def test_local_task_without_path(config):
    del config["tasks"]["reviews"]["path"]
    msg = errors_of(config)
    assert "tasks.reviews.path" in msg


def test_local_model_without_config_json(config, tmp_path):
    empty = tmp_path / "empty_model"
    empty.mkdir()
    config["models"]["tiny"]["path"] = str(empty)
    msg = errors_of(config)
    assert "config key 'models.tiny.path'" in msg and str(empty) in msg


def test_template_input_without_text(config):
    config["tasks"]["reviews"]["template"]["input"] = "Review:\nSentiment:"
    msg = errors_of(config)
    assert "config key 'tasks.reviews.template.input'" in msg
    assert "{text}" in msg


def test_template_unknown_placeholder(config):
    config["tasks"]["reviews"]["template"]["input"] = "Premise: {text}\nHypothesis: {text_b}\nAnswer:"
    msg = errors_of(config)
    assert "config key 'tasks.reviews.template.input'" in msg and "{text_b}" in msg
    config["tasks"]["reviews"]["columns"]["text_b"] = "hypothesis"
    validate_config(config)  # a pair task may use {text_b}


def test_template_output_needs_label(config):
    config["tasks"]["reviews"]["template"]["output"] = " {word}"
    msg = errors_of(config)
    assert "config key 'tasks.reviews.template.output'" in msg


def registry_model(**extra) -> dict:
    return {"source": "registry_gguf", "package": "llm-x==0.1.0", "sha256": "a" * 64, **extra}


@pytest.mark.parametrize(
    "extra", [{"member": "x/model.gguf", "assemble": "x_pkg:assemble"}, {}], ids=["both", "neither"]
)
def test_registry_model_needs_exactly_one_of_member_assemble(config, extra):
    config["models"]["gguf"] = registry_model(**extra)
    msg = errors_of(config)
    assert "config key 'models.gguf'" in msg
    assert "member" in msg and "assemble" in msg


@pytest.mark.parametrize("extra", [{"member": "x/model.gguf"}, {"assemble": "x_pkg:assemble"}])
def test_registry_model_with_one_of_member_assemble(config, extra):
    config["models"]["gguf"] = registry_model(**extra)
    config["study"]["models"].append("gguf")
    validate_config(config)


def test_registry_model_bad_sha256(config):
    config["models"]["gguf"] = registry_model(member="m.gguf", sha256="XYZ")
    msg = errors_of(config)
    assert "config key 'models.gguf.sha256'" in msg


def test_registry_task_requires_package(config):
    task = config["tasks"]["reviews"]
    task["source"] = "registry"
    del task["path"]
    msg = errors_of(config)
    for key in ("package", "sha256", "member"):
        assert f"config key 'tasks.reviews.{key}'" in msg


def test_all_problems_reported_together(config):
    config["study"]["tasks"] = ["nope"]
    config["tasks"]["reviews"]["template"]["input"] = "no text here"
    msg = errors_of(config)
    assert "study.tasks" in msg and "tasks.reviews.template.input" in msg


def test_repo_config_is_valid():
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    validate_config(config)
    assert set(config["study"]["tasks"]) <= set(config["tasks"])
    assert set(config["study"]["models"]) <= set(config["models"])


def _walk_properties(schema: dict, where: str):
    """Yield (path, subschema) for every named property definition at every depth.

    Descends through properties, additionalProperties (the schema of named entries such as
    models.<name>) and items; `if` conditions only refer back to properties defined elsewhere.
    """
    for name, sub in schema.get("properties", {}).items():
        path = f"{where}.{name}" if where else name
        yield path, sub
        yield from _walk_properties(sub, path)
    extra = schema.get("additionalProperties")
    if isinstance(extra, dict):
        yield from _walk_properties(extra, f"{where}.<name>")
    items = schema.get("items")
    if isinstance(items, dict):
        yield from _walk_properties(items, f"{where}[]")


def ablation_config(config: dict, **ablation) -> dict:
    config["settings"] = {"random": {"selection": "random"}, "sim": {"selection": "similar", "queries": "heldout"}}
    config["ablations"] = {"retrieval": {"kind": "retrieval", "settings": ["sim"], **ablation}}
    return config


def test_ablation_defaults_to_every_task_and_the_first_seed(config):
    config["study"]["seeds"] = [3, 4]
    out = validate_config(ablation_config(config))
    assert out["ablations"]["retrieval"] == {
        "kind": "retrieval", "settings": ["sim"], "baseline": "random", "tasks": ["reviews"], "seeds": [3]
    }
    assert out["settings"]["sim"]["balanced"] is True and out["settings"]["sim"]["similarity"] == "encoder"


@pytest.mark.parametrize("ablation,message", [
    ({"baseline": "sim"}, "config key 'ablations.retrieval.baseline': 'sim' is not in study.settings ['random']"),
    ({"seeds": [9]}, "config key 'ablations.retrieval.seeds': [9] not in [0, 1]"),
    ({"tasks": ["nope"]}, "config key 'ablations.retrieval.tasks': ['nope'] not in ['reviews']"),
    ({"settings": ["missing"]}, "config key 'ablations.retrieval.settings': ['missing'] not in ['random', 'sim']"),
])
def test_ablation_errors_name_the_key(config, ablation, message):
    with pytest.raises(ConfigError) as info:
        validate_config(ablation_config(config, **ablation))
    assert message in str(info.value)


def test_every_schema_property_has_a_description():
    schema = yaml.safe_load(cfg_mod.SCHEMA_PATH.read_text())
    found = list(_walk_properties(schema, ""))
    paths = {p for p, _ in found}
    # The walk reaches the nested levels (guards against a walk that silently sees nothing).
    assert {"prompts.k", "tasks.<name>.template.input", "tasks.<name>.columns.text_b",
            "models.<name>.member", "settings.<name>.selection", "theory.kernels"} <= paths
    undocumented = [p for p, sub in found if not str(sub.get("description", "")).strip()]
    assert undocumented == []


def test_every_schema_default_is_valid_for_its_property():
    import jsonschema

    schema = yaml.safe_load(cfg_mod.SCHEMA_PATH.read_text())
    for path, sub in _walk_properties(schema, ""):
        if "default" in sub:
            rest = {k: v for k, v in sub.items() if k != "default"}
            try:
                jsonschema.Draft7Validator(rest).validate(sub["default"])
            except jsonschema.ValidationError as exc:
                pytest.fail(f"default of {path} is invalid: {exc.message}")


def schema_keys(schema: dict, prefix: str = "", depth: int = 3) -> list[str]:
    """Dotted paths of every key the config schema documents, `<name>` for user-named entries."""
    keys = []
    children = dict(schema.get("properties", {}))
    if isinstance(schema.get("additionalProperties"), dict):
        children["<name>"] = schema["additionalProperties"]
    for name, sub in children.items():
        path = f"{prefix}{name}"
        keys.append(path)
        if depth > 1:
            keys += schema_keys(sub, f"{path}.", depth - 1)
    return keys


def test_rerun_contract_covers_every_config_key():
    doc = (REPO / "docs" / "reruns.md").read_text()
    named = set(re.findall(r"`([^`]+)`", doc))
    # A row may name a key by its group (`theory.*`) or, within a task, as `.key` after `tasks.<name>.`.
    wildcards = {n[:-1] for n in named if n.endswith(".*")} | {n for n in named if "." not in n}
    named |= {f"tasks.<name>{n}" for n in named if n.startswith(".")}
    schema = yaml.safe_load((REPO / "schemas" / "config.schema.yaml").read_text())
    leaves = [k for k in schema_keys(schema) if k.count(".") >= 1 and not k.endswith("<name>")]
    missing = [k for k in leaves if k not in named and not any(k.startswith(w) for w in wildcards)]
    # A section's own name (e.g. `settings.<name>` for what is inside it) needs no row of its own.
    missing = [k for k in missing if not any(k.startswith(f"{n}.") for n in named)]
    assert not missing, f"docs/reruns.md has no row for {missing}"


def test_layers_relative_to_depth_are_accepted_and_bad_ones_named(config):
    config["extraction"] = {"kv_layers": [0, 0.5, 1.0, -1], "hidden_layers": [0.75]}
    config["settings"] = {"random": {"selection": "random"}, "near": {"selection": "similar", "similarity": "hidden", "hidden_layer": 0.6}}
    validate_config(copy.deepcopy(config))
    config["extraction"] = {"kv_layers": [2.5]}
    with pytest.raises(ConfigError, match=r"extraction.kv_layers.0': 2.5 is not an integer nor a number in \[0, 1\]"):
        validate_config(config)


def test_encoder_source_needs_its_keys(config):
    config["encoder"] = {"name": "enc", "source": "registry", "package": "x==1", "member": "m/"}
    assert "config key 'encoder.sha256': required when source is 'registry'" in errors_of(copy.deepcopy(config))
    config["encoder"] = {"name": "enc", "source": "hub"}
    assert "config key 'encoder.source'" in errors_of(config)


def test_theory_sizes_that_cannot_make_an_hmm_are_named(config):
    config["theory"] = {"n_tasks": 9, "n_states": 8, "n_observations": 4, "n_labels": 3}
    msg = errors_of(config)
    assert "config keys 'theory.n_tasks' (9) and 'theory.n_states' (8)" in msg
    assert "config keys 'theory.n_observations' (4) and 'theory.n_labels' (3)" in msg


def test_label_format_needs_a_word_per_class(config):
    config["settings"] = {"sym": {"selection": "random", "labels": "symbols", "label_symbols": ["A"]}}
    config["study"]["settings"] = ["sym"]
    assert "config key 'settings.sym.label_symbols': 1 entries for labels: symbols, but a task of the study has 2 classes" in errors_of(config)


KEY_SECTIONS = "study|models|tasks|settings|ablations|prompts|extraction|analysis|encoder|report|theory"
# A key as code and docs name it: `prompts.k`, config key 'tasks.{task}.columns', prompts.n_eval=...
NAMED_KEY = re.compile(
    rf"(?:config keys? '|`|\b(?=(?:{KEY_SECTIONS})\.[\w.]+=))((?:{KEY_SECTIONS})(?:\.(?:[A-Za-z_]+|\*|\{{[^}}]*\}}|<[^>]*>))+)"
)


def schema_has(schema: dict, key: str) -> bool:
    """Whether `key` names a config key; a placeholder part ({task}, <name>, *) stands for any name."""
    node = schema
    for part in key.split("."):
        named = node.get("properties", {})
        if part[0] in "{<*":
            if named:
                return True  # a placeholder among named keys (config.py's own loops): any of them
            node = node.get("additionalProperties", {})
        elif part in named:
            node = named[part]
        elif isinstance(node.get("additionalProperties"), dict):
            node = node["additionalProperties"]
        else:
            return False
    return True


def test_config_keys_named_in_code_and_docs_exist():
    schema = yaml.safe_load((REPO / "schemas" / "config.schema.yaml").read_text())
    files = [*(REPO / "workflow_scripts").glob("*.py"), *(REPO / "rules").glob("*.smk"), REPO / "README.md",
             *(REPO / "docs").glob("*.md"), *(REPO / "report").glob("*.rst")]
    named = {(f.relative_to(REPO), m.group(1).rstrip(".")) for f in files for m in NAMED_KEY.finditer(f.read_text())}
    assert len(named) > 40  # the pattern still finds what code and docs name
    stale = sorted(f"{f}: {key}" for f, key in named if not schema_has(schema, key))
    assert not stale, f"keys that the config schema does not have: {stale}"
    assert not schema_has(schema, "analysis.encoder.path") and schema_has(schema, "encoder.path")


@pytest.mark.parametrize("setting, message", [
    ({"query_swap": True}, "config key 'settings.swap.query_swap': needs queries: heldout and selection: random (got queries: all, selection: random)"),
    ({"query_swap": True, "queries": "heldout", "selection": "similar"}, "needs queries: heldout and selection: random (got queries: heldout, selection: similar)"),
])
def test_a_query_swap_setting_must_swap_held_out_queries_of_random_draws(config, setting, message):
    config["settings"] = {"random": {}, "swap": setting}
    assert message in errors_of(config)


def test_the_query_swap_setting_must_name_a_query_swap_setting(config):
    config["settings"] = {"random": {}, "other": {"queries": "heldout"}}
    config["analysis"] = {"query_swap_setting": "other"}
    assert "config key 'analysis.query_swap_setting': 'other' is not a setting with query_swap: true" in errors_of(config)
    config["analysis"] = {"query_swap_setting": "missing"}
    assert "'missing' is not a setting with query_swap: true (settings: ['other', 'random'])" in errors_of(config)


@pytest.mark.parametrize("extraction, message", [
    ({"gpus": 2}, r"'extraction.gpus': 2 GPUs per job, but extraction.device_map is null"),
    ({"device": "cpu", "device_map": "auto"}, r"'extraction.device_map': splits the model over GPUs, but extraction.device is cpu"),
    ({"max_memory": {"0": "10GiB"}}, r"'extraction.max_memory': caps the devices of a split model; set extraction.device_map too"),
    ({"device_map": "everywhere"}, r"extraction.device_map"),
    ({"device_map": "auto", "max_memory": {"gpu0": "10GiB"}}, r"extraction.max_memory"),
    ({"gpus": -1}, r"extraction.gpus"),
])
def test_bad_model_placement_is_named(config, extraction, message):
    config["extraction"] = extraction
    with pytest.raises(ConfigError, match=message):
        validate_config(config)


def test_a_split_model_config_is_accepted(config):
    config["extraction"] = {"device": "cuda", "gpus": 4, "device_map": "balanced", "max_memory": {"0": "60GiB", "1": "75GiB", "cpu": "200GiB"}}
    assert validate_config(config)["extraction"]["gpus"] == 4


def test_study_ablations_picks_which_ablations_run():
    """An overlay's `ablations: {}` merges into nothing; study.ablations is the switch."""
    default = yaml.safe_load((REPO / "config.yaml").read_text())
    assert set(validate_config(copy.deepcopy(default))["ablations"]) == {"retrieval", "labels", "typos", "k", "order"}
    none = copy.deepcopy(default)
    none["study"]["ablations"] = []
    assert validate_config(none)["ablations"] == {}
    some = copy.deepcopy(default)
    some["study"]["ablations"] = ["labels"]
    assert list(validate_config(some)["ablations"]) == ["labels"]
    wrong = copy.deepcopy(default)
    wrong["study"]["ablations"] = ["label"]
    with pytest.raises(ConfigError, match=r"'study.ablations': \['label'\] are not defined under 'ablations' \(defined: \['k', 'labels'"):
        validate_config(wrong)
