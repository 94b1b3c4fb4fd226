"""Config validation: JSON schema with defaults, then the cross-references a schema cannot express.

Everything here runs when the Snakefile is parsed, so a bad config stops before any job starts.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import yaml

from workflow_scripts.core import model_check

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "schemas" / "config.schema.yaml"


class ConfigError(ValueError):
    """A config value that cannot work; the message names the key and what was expected."""


def _key(path) -> str:
    return ".".join(str(p) for p in path) or "<top level>"


def _with_defaults(validator_class):
    """A validator that fills in `default` values, so code can index every documented key."""
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, sub in properties.items():
                if "default" in sub and name not in instance:
                    instance[name] = _copy(sub["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})


def _copy(value: Any) -> Any:
    return yaml.safe_load(yaml.safe_dump(value, sort_keys=False))  # keeps the order of named entries (theory.variants)


def _describe(error: jsonschema.ValidationError) -> str:
    key = _key(error.absolute_path)
    if error.validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        return f"config key '{key}': {error.message}" + (f"; allowed keys: {allowed}" if allowed else "")
    if error.validator == "propertyNames":
        return f"config key '{key}': name {error.instance!r} must match {error.schema.get('pattern')}"
    if error.validator == "oneOf" and error.context:
        return f"config key '{key}': give exactly one of " + ", ".join(
            sorted({str(e.validator_value[0]) for e in error.context if e.validator == "required"})
        )
    if error.validator == "anyOf":
        return f"config key '{key}': {error.instance!r} is not " + " nor ".join(map(_expected, error.validator_value))
    return f"config key '{key}': {error.message}"


def _expected(schema: dict) -> str:
    """A subschema in words, e.g. 'a number in [0, 1]'."""
    words = {"integer": "an integer", "number": "a number", "string": "a string"}.get(schema.get("type"), str(schema))
    if "minimum" in schema and "maximum" in schema:
        words += f" in [{schema['minimum']}, {schema['maximum']}]"
    return words


def validate_config(config: dict) -> dict:
    """Validate `config` in place against the schema (filling defaults) and check cross-references."""
    schema = yaml.safe_load(SCHEMA_PATH.read_text())
    validator = _with_defaults(jsonschema.Draft7Validator)(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        raise ConfigError("\n".join(_describe(e) for e in errors))
    _check_references(config)
    return config


def setting_defaults(setting: dict) -> dict:
    """A `settings` entry with its schema defaults filled in, for callers outside a validated config
    (template search, tests)."""
    schema = yaml.safe_load(SCHEMA_PATH.read_text())["properties"]["settings"]["additionalProperties"]
    filled = _copy(setting)
    errors = list(_with_defaults(jsonschema.Draft7Validator)(schema).iter_errors(filled))
    if errors:
        raise ConfigError("\n".join(f"setting: {e.message}" for e in errors))
    return filled


def theory_defaults(theory: dict) -> dict:
    """A `theory` section with its schema defaults filled in, for callers outside a validated config
    (the benchmark)."""
    schema = yaml.safe_load(SCHEMA_PATH.read_text())["properties"]["theory"]
    filled = _copy(theory)
    errors = list(_with_defaults(jsonschema.Draft7Validator)(schema).iter_errors(filled))
    if errors:
        raise ConfigError("\n".join(f"config key 'theory.{_key(e.absolute_path)}': {e.message}" for e in errors))
    problems = _theory_problems(filled)
    if problems:
        raise ConfigError("\n".join(problems))
    return filled


def _check_references(config: dict) -> None:
    problems: list[str] = []
    for section in ("models", "tasks", "settings"):
        for name in config["study"].get(section, []):
            if name not in config[section]:
                problems.append(
                    f"config key 'study.{section}': {name!r} is not defined under '{section}' "
                    f"(defined: {sorted(config[section])})"
                )
    for name, task in config["tasks"].items():
        problems += _task_problems(name, task)
        problems += _encoding_problems(name, task)
    for name, model in config["models"].items():
        if model["source"] == "local" and name in config["study"]["models"]:
            if not (Path(model["path"]) / "config.json").is_file():
                problems.append(
                    f"config key 'models.{name}.path': {model['path']!r} is not a model directory "
                    "(expected a folder holding config.json, weights and tokenizer files)"
                )
            else:
                problems += _local_model_problems(name, model["path"])
    analysis, n_eval = config["analysis"], config["prompts"]["n_eval"]
    if analysis["n_select"] + analysis["n_heldout"] > n_eval:
        problems.append(
            f"config keys 'analysis.n_select' ({analysis['n_select']}) + 'analysis.n_heldout' ({analysis['n_heldout']}) "
            f"exceed 'prompts.n_eval' ({n_eval}): the select and held-out prompts must be disjoint test prompts"
        )
    problems += _ablation_problems(config)
    problems += _query_swap_problems(config)
    problems += _theory_problems(config["theory"])
    problems += _intervention_problems(config)
    problems += _label_format_problems(config)
    problems += _placement_problems(config["extraction"])
    problems += probe_problems(config)
    problems += _calibration_problems(config)
    encoder = config["encoder"]
    needs = {"registry": ["package", "sha256", "member"], "local": ["path"]}[encoder["source"]]
    problems += [f"config key 'encoder.{key}': required when source is {encoder['source']!r}" for key in needs if key not in encoder]
    if problems:
        raise ConfigError("\n".join(problems))


def _local_model_problems(name: str, path: str) -> list[str]:
    """A local model folder that cannot be the studied model (an encoder, or no tokenizer files or
    weights), found from its files before any job runs; prepare_model checks every source again."""
    return model_check.model_dir_problems(Path(path), f"models.{name}.path")


def _placement_problems(extraction: dict) -> list[str]:
    """GPU counts and model splits that cannot run as asked."""
    problems = []
    if extraction["gpus"] > 1 and not extraction["device_map"]:
        problems.append(
            f"config key 'extraction.gpus': {extraction['gpus']} GPUs per job, but extraction.device_map is null, "
            "so the model would sit on one of them; set device_map (e.g. auto) to split it, or gpus: 1"
        )
    if extraction["device_map"] and extraction["device"] == "cpu":
        problems.append("config key 'extraction.device_map': splits the model over GPUs, but extraction.device is cpu")
    if extraction["max_memory"] and not extraction["device_map"]:
        problems.append("config key 'extraction.max_memory': caps the devices of a split model; set extraction.device_map too")
    return problems


def calibration_texts(config: dict) -> list[str]:
    """The content-free queries the calibration averages: calibration.content_free, or every one
    of prompts.content_free when that is null."""
    chosen = config["calibration"]["content_free"]
    return list(config["prompts"]["content_free"] if chosen is None else chosen)


def _calibration_problems(config: dict) -> list[str]:
    if not config["calibration"]["enabled"]:
        return []
    built = config["prompts"]["content_free"]
    if not built:
        return ["config key 'prompts.content_free' is empty, so no content-free query is built: "
                "name one (e.g. [\"N/A\"]) or set 'calibration.enabled' to false"]
    missing = [text for text in calibration_texts(config) if text not in built]
    return [f"config key 'calibration.content_free': {missing} are not among 'prompts.content_free' {built}, "
            "the queries the extraction runs; add them there (that re-runs extraction of the full sets)"] if missing else []


def _ablation_problems(config: dict) -> list[str]:
    """Keep the ablations study.ablations names, fill each one's default tasks and seeds and check
    they lie inside the study."""
    problems = []
    study = config["study"]
    if study["ablations"] is not None:
        unknown = [name for name in study["ablations"] if name not in config["ablations"]]
        if unknown:
            return [f"config key 'study.ablations': {unknown} are not defined under 'ablations' (defined: {sorted(config['ablations'])})"]
        # Only the chosen ones exist from here on: every rule, input and report reads config["ablations"].
        config["ablations"] = {name: config["ablations"][name] for name in study["ablations"]}
    for name, ablation in config["ablations"].items():
        where = f"ablations.{name}"
        ablation.setdefault("tasks", list(study["tasks"]))
        ablation.setdefault("seeds", study["seeds"][:1])
        if ablation["baseline"] not in study["settings"]:
            problems.append(f"config key '{where}.baseline': {ablation['baseline']!r} is not in study.settings {study['settings']}")
        for key, allowed in (("settings", list(config["settings"])), ("tasks", study["tasks"]), ("seeds", study["seeds"])):
            unknown = [v for v in ablation[key] if v not in allowed]
            if unknown:
                problems.append(f"config key '{where}.{key}': {unknown} not in {allowed}")
    return problems


def _query_swap_problems(config: dict) -> list[str]:
    problems = []
    for name, setting in config["settings"].items():
        if setting.get("query_swap") and (setting["queries"] != "heldout" or setting["selection"] != "random"):
            problems.append(
                f"config key 'settings.{name}.query_swap': needs queries: heldout and selection: random "
                f"(got queries: {setting['queries']}, selection: {setting['selection']})"
            )
    name = config["analysis"]["query_swap_setting"]
    if name is not None and not config["settings"].get(name, {}).get("query_swap"):
        problems.append(
            f"config key 'analysis.query_swap_setting': {name!r} is not a setting with query_swap: true "
            f"(settings: {sorted(config['settings'])})"
        )
    return problems


def _intervention_problems(config: dict) -> list[str]:
    interventions = config["interventions"]
    if not interventions["enabled"]:
        return []
    problems = []
    setting = interventions["setting"]
    if setting not in config["study"]["settings"]:
        problems.append(f"config key 'interventions.setting': {setting!r} is not in study.settings {config['study']['settings']}")
    elif config["settings"][setting]["queries"] != "all":
        problems.append(f"config key 'interventions.setting': {setting!r} builds only held-out prompts; it needs queries: all")
    if interventions["knockout"] == "mean" and not config["extraction"]["head_outputs"]:
        problems.append("config key 'interventions.knockout': mean needs extraction.head_outputs: true (or use zero)")
    return problems


def _theory_problems(theory: dict) -> list[str]:
    problems = []
    if theory["n_tasks"] > theory["n_states"]:
        problems.append(
            f"config keys 'theory.n_tasks' ({theory['n_tasks']}) and 'theory.n_states' ({theory['n_states']}): "
            "every task starts in its own state, so n_tasks must not exceed n_states"
        )
    if theory["n_observations"] - 1 - theory["n_labels"] < 1:
        problems.append(
            f"config keys 'theory.n_observations' ({theory['n_observations']}) and 'theory.n_labels' ({theory['n_labels']}): "
            "the vocabulary needs the delimiter, the labels and at least one input token"
        )
    for name, overrides in (theory["variants"] or {theory["construction"]: {}}).items():
        problems += _theory_variant_problems(theory, name, overrides)
    return problems


def _theory_variant_problems(theory: dict, name: str, overrides: dict) -> list[str]:
    """A variant's construction against the sizes; each message names the key that set the value."""
    def key(part: str) -> str:
        return f"theory.variants.{name}.{part}" if part in overrides else f"theory.{part}"

    construction = overrides.get("construction", theory["construction"])
    leakage = overrides.get("leakage", theory["leakage"])
    problems = []
    if construction == "block" and theory["n_states"] % theory["n_tasks"]:
        problems.append(
            f"config key '{key('construction')}': block needs 'theory.n_states' ({theory['n_states']}) divisible by "
            f"'theory.n_tasks' ({theory['n_tasks']}), one equal block of states per task"
        )
    if leakage > 0 and construction != "block":
        problems.append(f"config key '{key('leakage')}': {leakage} applies only to construction: block (variant {name!r} is {construction})")
    elif leakage > 0 and theory["n_tasks"] < 2:
        problems.append(f"config key '{key('leakage')}': {leakage} needs 'theory.n_tasks' >= 2 (another block to leak to)")
    return problems


def _label_format_problems(config: dict) -> list[str]:
    """A setting that shows neutral symbols or unrelated words needs one per class of every task it runs on."""
    problems = []
    n_classes = max((len(config["tasks"][t]["classes"]) for t in config["study"]["tasks"] if t in config["tasks"]), default=0)
    for name, setting in config["settings"].items():
        pool = {"symbols": "label_symbols", "words": "label_pool"}.get(setting["labels"])
        if pool and len(setting[pool]) < n_classes:
            problems.append(
                f"config key 'settings.{name}.{pool}': {len(setting[pool])} entries for labels: {setting['labels']}, "
                f"but a task of the study has {n_classes} classes"
            )
    return problems


def _task_problems(name: str, task: dict) -> list[str]:
    where = f"tasks.{name}"
    problems = []
    classes = task["classes"]
    for raw, cls in task["label_map"].items():
        if cls not in classes:
            problems.append(f"config key '{where}.label_map.{raw}': {cls!r} is not one of classes {classes}")
    unmapped = [c for c in classes if c not in task["label_map"].values()]
    if unmapped:
        problems.append(f"config key '{where}.label_map': no raw label maps to classes {unmapped}")
    for cls in task.get("label_words", {}):
        if cls not in classes:
            problems.append(f"config key '{where}.label_words.{cls}': not one of classes {classes}")
    words = configured_label_words(task)
    if len(set(words.values())) != len(words):
        problems.append(f"config key '{where}.label_words': label words must be distinct, got {words}")
    template = task["template"]
    fields = {"text"} | ({"text_b"} if "text_b" in task["columns"] else set())
    for part in ("input",):
        for field in _fields(template[part]):
            if field not in fields:
                problems.append(
                    f"config key '{where}.template.{part}': placeholder {{{field}}} is not one of "
                    f"{sorted(fields)} (add columns.{field} for text pairs)"
                )
    if "{text}" not in template["input"]:
        problems.append(f"config key '{where}.template.input': must contain {{text}}")
    if _fields(template["output"]) != {"label"} or template["output"].count("{label}") != 1:
        problems.append(f"config key '{where}.template.output': must contain {{label}} once and nothing else in braces")
    required = {"registry": ["package", "sha256", "member"], "hub": ["path"], "local": ["path"]}
    for key in required[task["source"]]:
        if key not in task:
            problems.append(f"config key '{where}.{key}': required when source is {task['source']!r}")
    if task["source"] == "local" and "path" in task and not Path(task["path"]).is_file():
        problems.append(f"config key '{where}.path': file {task['path']!r} does not exist")
    return problems


# Task keys that only decide whether prepare_task stops (undecodable bytes, labels outside
# label_map), never what it writes: no stage takes them as params, so setting one re-runs nothing.
TASK_GATE_KEYS = ("encoding_errors", "max_unmapped_share")


def _encoding_problems(name: str, task: dict) -> list[str]:
    """An encoding Python has no codec for would only fail inside the data job."""
    import codecs

    try:
        codecs.lookup(task.get("encoding", "utf-8-sig"))
    except LookupError:
        return [f"config key 'tasks.{name}.encoding': {task['encoding']!r} is not a Python codec name (e.g. utf-8, cp1252, latin-1)"]
    return []


def _fields(template: str) -> set[str]:
    import string

    return {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}


def configured_label_words(task: dict) -> dict[str, str]:
    """Class name -> label word, in class order (the class name where no word is configured)."""
    words = task.get("label_words", {})
    return {c: words.get(c, c) for c in task["classes"]}


def probe_problems(config: dict) -> list[str]:
    """analysis.probe_folds against the most demonstrations the probes can get: the first
    extraction.kv_max_prompts prompts of a set keep theirs, k each (fewer distinct ones if the pool
    is smaller)."""
    extraction, analysis, prompts = config["extraction"], config["analysis"], config["prompts"]
    if not extraction["kv_layers"]:
        return []
    problems = []
    for setting in config["study"]["settings"]:
        k = config["settings"][setting].get("k") or prompts["k"]
        n_prompts = prompts["n_eval"] if config["settings"][setting]["queries"] == "all" else analysis["n_heldout"]
        kept = min(extraction["kv_max_prompts"], n_prompts) * k
        if prompts["pool_size"]:
            kept = min(kept, prompts["pool_size"])
        if analysis["probe_folds"] > kept:
            problems.append(
                f"config key 'analysis.probe_folds': {analysis['probe_folds']} folds, but setting {setting!r} keeps at most "
                f"{kept} distinct demonstrations for the probes (extraction.kv_max_prompts x k, capped by prompts.pool_size); "
                "lower probe_folds or raise extraction.kv_max_prompts"
            )
    return problems
