"""Hub models (and hub datasets) with no network: prepared from a pre-filled Hugging Face cache, or
refused with a message that says how to fill it.

huggingface_hub reads HF_HOME and HF_HUB_OFFLINE when it is imported, so every call that must see
them runs in a fresh Python process that inherits the monkeypatched environment.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from workflow_scripts.core import paths, table_io, tables
from workflow_scripts.model import loading
from workflow_scripts.sources import manifests, models, tokenizers

from .conftest import HUB_COMMIT, HUB_TINY_LLAMA, REPO, toy_sentiment_rows

# Variables that would override HF_HOME's hub cache if the environment running the tests had them.
CACHE_OVERRIDES = ["HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "TRANSFORMERS_CACHE", "HF_DATASETS_CACHE", "HF_ENDPOINT"]

# Calls `module.function(*json args)` and turns the error class under test into exit status 3 with
# its message and the class of its cause on stdout.
CALL = """
import importlib, json, sys
module = importlib.import_module("workflow_scripts." + sys.argv[1])
try:
    getattr(module, sys.argv[2])(*json.loads(sys.argv[3]))
except getattr(module, sys.argv[4]) as exc:
    print(exc)
    print("cause:", type(exc.__cause__).__name__)
    sys.exit(3)
"""


def use_hub_cache(monkeypatch, hf_home: Path, offline: bool = True) -> None:
    for name in CACHE_OVERRIDES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HOME", str(hf_home))
    if offline:
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    else:
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)


def call(module: str, function: str, args: list, error: str) -> subprocess.CompletedProcess:
    """Run workflow_scripts.<module>.<function>(*args) in a fresh process with the current environment."""
    return subprocess.run(
        [sys.executable, "-c", CALL, module, function, json.dumps(args), error],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )


def prepare(name: str, cfg: dict, workdir: Path) -> subprocess.CompletedProcess:
    args = [name, cfg, str(workdir / paths.model_manifest(name)), str(workdir / paths.downloads("models"))]
    return call("sources.models", "prepare_model", args, "ModelError")


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, hub_home) -> dict:
    workdir = tmp_path_factory.mktemp("hub_prepare")
    with pytest.MonkeyPatch.context() as monkeypatch:
        use_hub_cache(monkeypatch, hub_home)
        done = prepare("tiny", {"source": "hub", "id": HUB_TINY_LLAMA, "revision": "main"}, workdir)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    return manifests.read_manifest(workdir / paths.model_manifest("tiny"))


def test_the_test_cache_is_a_valid_hub_cache(hub_home):
    from huggingface_hub import scan_cache_dir

    info = scan_cache_dir(hub_home / "hub")
    assert not info.warnings
    (repo,) = info.repos
    assert repo.repo_id == HUB_TINY_LLAMA and repo.repo_type == "model"
    (revision,) = repo.revisions
    assert revision.commit_hash == HUB_COMMIT and revision.refs == frozenset({"main"})
    assert {f.file_name for f in revision.files} >= {"config.json", "model.safetensors", "tokenizer.json"}


def test_manifest_points_at_the_cached_snapshot(prepared, hub_home):
    snapshot = hub_home / "hub" / "models--org--tiny-llama" / "snapshots" / HUB_COMMIT
    assert Path(prepared["path"]) == snapshot.resolve()
    assert prepared["id"] == HUB_TINY_LLAMA and prepared["commit"] == HUB_COMMIT
    assert prepared["source"] == "hub" and prepared["revision"] is None
    assert Path(prepared["tokenizer"]).is_file()


def test_model_from_the_manifest_gives_the_original_logits(prepared, tiny_llama_dir):
    import torch
    from transformers import AutoModelForCausalLM

    ids = torch.tensor([[1, 504, 2114, 314, 1090, 30, 2]])
    original = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32).eval()
    loaded = loading.load_model(prepared, "cpu", "float32")
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, original(ids).logits)


def test_tokenizer_json_encodes_like_the_original(prepared, tiny_llama_dir):
    from transformers import AutoTokenizer

    text = "Review: the film is good\nSentiment: positive"
    expected = AutoTokenizer.from_pretrained(tiny_llama_dir)(text)["input_ids"]
    assert tokenizers.load_tokenizer(prepared)(text)["input_ids"] == expected


def test_model_neither_cached_nor_reachable_says_how_to_fill_the_cache(monkeypatch, tmp_path, hub_home):
    use_hub_cache(monkeypatch, hub_home)
    done = prepare("big", {"source": "hub", "id": "org/missing", "revision": "main"}, tmp_path)
    assert done.returncode == 3, done.stdout + done.stderr[-3000:]
    message = done.stdout
    assert "models.big.id" in message and "'org/missing'" in message and "revision 'main'" in message
    assert "HF_HOME" in message and "HF_HUB_OFFLINE is set" in message and str(hub_home / "hub") in message
    assert paths.model_manifest("big") in message and "hf download org/missing" in message
    assert "cause: LocalEntryNotFoundError" in message
    assert not (tmp_path / paths.model_manifest("big")).exists()


def test_unreachable_hub_without_offline_mode_gives_the_same_advice(monkeypatch, tmp_path):
    use_hub_cache(monkeypatch, tmp_path / "empty_home", offline=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there: connection refused
    done = prepare("big", {"source": "hub", "id": "org/missing", "revision": "v1"}, tmp_path)
    assert done.returncode == 3, done.stdout + done.stderr[-3000:]
    assert "models.big.id" in done.stdout and "revision 'v1'" in done.stdout and "HF_HOME" in done.stdout
    assert "HF_HUB_OFFLINE" not in done.stdout


def fake_snapshot_download(repo_files: list[str], root: Path, calls: list):
    """A snapshot_download over a repository holding `repo_files`: it fills one snapshot folder with
    the files that match the patterns of each call, as the real one adds to the commit's folder."""
    from fnmatch import fnmatch

    def download(repo_id: str, revision: str, allow_patterns: list[str]) -> str:
        calls.append(allow_patterns)
        folder = root / HUB_COMMIT
        folder.mkdir(parents=True, exist_ok=True)
        for name in repo_files:
            if any(fnmatch(name, pattern) for pattern in allow_patterns):
                (folder / name).write_text("")
        return str(folder)

    return download


@pytest.mark.parametrize(
    ("repo_files", "expected_calls", "expected_files"),
    [
        (["config.json", "model.safetensors", "pytorch_model.bin"], 1, {"config.json", "model.safetensors"}),
        (["config.json", "pytorch_model.bin"], 2, {"config.json", "pytorch_model.bin"}),
    ],
    ids=["safetensors-and-bin", "bin-only"],
)
def test_bin_weights_are_fetched_only_without_safetensors(monkeypatch, tmp_path, repo_files, expected_calls, expected_files):
    import huggingface_hub

    calls = []
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download(repo_files, tmp_path, calls))
    folder = models.download_hub_model("org/m", "main")
    assert len(calls) == expected_calls
    assert {p.name for p in folder.iterdir()} == expected_files


def test_repo_without_weights_is_a_model_error(monkeypatch, tmp_path):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download(["config.json"], tmp_path, []))
    with pytest.raises(manifests.ModelError, match=r"models\.m\.id: 'org/m' \(revision 'main'\) has no"):
        models.hub_snapshot("m", "org/m", "main")


def test_hub_dataset_neither_cached_nor_reachable_says_how_to_fill_the_cache(monkeypatch, tmp_path):
    use_hub_cache(monkeypatch, tmp_path / "empty_home")
    done = call("sources.data", "fetch_hub_dataset", ["sst", "nyu-mll/glue", "sst2", "train", str(tmp_path / "out")], "DataError")
    assert done.returncode == 3, done.stdout + done.stderr[-3000:]
    message = done.stdout
    assert "tasks.sst.path" in message and "'nyu-mll/glue'" in message and "'sst2'" in message and "'train'" in message
    assert "HF_HOME" in message and paths.task_source("sst") in message and "cause: ConnectionError" in message


@pytest.mark.workflow
def test_workflow_runs_a_hub_model_from_the_cache_offline(monkeypatch, tmp_path, hub_home, tiny_bert_dir):
    from .test_workflow import snakemake, tiny_config, write_config

    data_file = tmp_path / "toy.csv"
    pl.DataFrame(toy_sentiment_rows()).write_csv(data_file)
    config = tiny_config(Path("/nonexistent"), data_file, tiny_bert_dir)
    config["models"]["tiny"] = {"source": "hub", "id": HUB_TINY_LLAMA}
    write_config(tmp_path, config)
    use_hub_cache(monkeypatch, hub_home)  # the snakemake subprocess and its jobs inherit this environment
    heads = paths.analysis("heads.parquet", "tiny", "toy", 0, "random")
    done = snakemake(tmp_path, heads)
    assert done.returncode == 0, done.stderr[-5000:]
    manifest = manifests.read_manifest(tmp_path / paths.model_manifest("tiny"))
    assert Path(manifest["path"]).is_relative_to(hub_home.resolve()) and manifest["commit"] == HUB_COMMIT
    assert table_io.read_table(tmp_path / heads, tables.HEADS).num_rows == 2 * 4 * 4  # layers x heads x kernels
