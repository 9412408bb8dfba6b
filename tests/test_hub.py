"""Hub ids as checkpoint sources (`init_from=org/name[@rev]`), never touching the network: a
hub cache in the real layout (`models--org--name/refs/main`, `snapshots/<hash>/...`) is built
in tmp_path and read with HF_HUB_OFFLINE=1, as `snapshot_download` reads a populated cache."""

import json
import logging
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
from huggingface_hub import constants

from lmtransfer import hf, main, tokenization
from lmtransfer.hf import hub
from tests.configs_loader import load_config
from tests.glue_data import WORDS, make_glue

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HASH = "0123456789abcdef0123456789abcdef01234567"
TAG_HASH = "fedcba9876543210fedcba9876543210fedcba98"


@pytest.fixture(scope="module")
def snapshot(tmp_path_factory):
    """A tiny random HF BERT with a small WordPiece tokenizer: one snapshot's files."""
    import torch
    import transformers

    out = str(tmp_path_factory.mktemp("snapshot"))
    torch.manual_seed(0)
    transformers.BertModel(transformers.BertConfig(
        vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=48, max_position_embeddings=64)).save_pretrained(out)
    tokenization.train_tokenizer("wordpiece", [" ".join(WORDS)] * 4, 80, out)
    return out


@pytest.fixture
def cache(snapshot, tmp_path, monkeypatch):
    """HF_HUB_CACHE = tmp_path/hub holding org/name at main (HASH) and tag v1 (TAG_HASH)."""
    root = tmp_path / "hub"
    repo = root / "models--org--name"
    for ref, commit in (("main", HASH), ("v1", TAG_HASH)):
        shutil.copytree(snapshot, repo / "snapshots" / commit)
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / ref).write_text(commit)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.setenv("HF_HUB_CACHE", str(root))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # huggingface_hub reads these once, at import: patch the module's copies too.
    monkeypatch.setattr(constants, "HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(root))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub, "_resolved", {})
    return repo


def _flat(params):
    return {"/".join(str(getattr(k, "key", k)) for k in path): np.asarray(x)
            for path, x in jax.tree_util.tree_leaves_with_path(params)}


def assert_same(a, b):
    a, b = _flat(a), _flat(b)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_load_pretrained_by_id_and_revision(cache, caplog):
    _, want = hf.load_pretrained(str(cache / "snapshots" / HASH))
    with caplog.at_level(logging.INFO, logger="lmtransfer.hf.hub"):
        for source in ("org/name", f"org/name@{HASH}", "org/name@v1"):
            _, params = hf.load_pretrained(source)
            assert_same(params, want)  # the v1 snapshot holds the same files
    assert f"at revision v1 (commit {TAG_HASH}) -> {cache}/snapshots/{TAG_HASH}" in caplog.text
    assert f"path=org/name: hub model org/name at revision main (commit {HASH})" in caplog.text
    tok = tokenization.load_tokenizer("org/name")
    assert tok.is_fast and len(tok) <= 99


def test_finetune_run_with_hub_id(cache, tmp_path, caplog):
    c = load_config("glue.py", "task=sst2,model=org/name")
    c.data.dir = make_glue(str(tmp_path / "glue"), n_train=16, n_dev=8, n_test=4)
    c.data.max_length = 16
    c.train.batch_size, c.train.eval_batch_size, c.train.steps = 8, 8, 2
    with caplog.at_level(logging.INFO, logger="lmtransfer.hf.hub"):
        results = main.run(c, str(tmp_path / "wd"))
    assert results["final_step"] == 2
    # Resolved once (tokenizer and weights from the same commit); the id is what's recorded.
    assert caplog.text.count("config.init_from=org/name: hub model") == 1
    saved = json.loads((tmp_path / "wd" / "config.json").read_text())
    assert saved["init_from"] == "org/name"


def test_missing_id_offline_is_one_error_before_training(cache, tmp_path):
    c = load_config("glue.py", "task=sst2,model=org/missing")
    c.data.dir = str(tmp_path / "no-data-needed")
    with pytest.raises(hub.HubError) as e:
        main.run(c, str(tmp_path / "wd"))
    msg = str(e.value)
    assert msg.startswith("config.init_from=org/missing: not a local path")
    assert "HF_HUB_OFFLINE=1" in msg and str(cache.parent) in msg
    assert "`hf download org/missing --local-dir DIR`" in msg
    assert msg.endswith("pass config.init_from=DIR instead")
    assert not (tmp_path / "wd" / "checkpoints").exists()
    assert not (tmp_path / "wd" / "metrics.jsonl").exists()
    with pytest.raises(hub.HubError, match=r"hf download org/name --revision nope "):
        hf.load_pretrained("org/name@nope")  # no such ref in the cache
    # The CLI: one `error:` line and exit code 2, like a bad flag.
    env = {**os.environ, "XLA_FLAGS": "", "JAX_PLATFORMS": "cpu"}
    r = subprocess.run([sys.executable, "-m", "lmtransfer.main", "--config",
                        "configs/glue.py:task=sst2,model=org/missing",
                        f"--config.data.dir={tmp_path}", "--workdir", str(tmp_path / "cli")],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stderr[-3000:]
    assert "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1] == f"error: {msg}"


def test_local_looking_paths_are_not_hub_ids(cache, tmp_path, monkeypatch):
    def no_hub(*a, **k):
        raise AssertionError("a path was looked up on the hub")

    monkeypatch.setattr("huggingface_hub.snapshot_download", no_hub)
    for path in ("./nope", str(tmp_path / "nope"), "nope/config.json"):
        with pytest.raises(FileNotFoundError, match="not a directory") as e:
            hf.load_pretrained(path)
        assert not isinstance(e.value, hub.HubError)
    with pytest.raises(FileNotFoundError, match="not a directory with tokenizer files"):
        tokenization.load_tokenizer("../nope")
    for path in ("~/nope", "a/b/c", "gs://bucket/model", "model.safetensors", "org/name@", ""):
        assert hub.split_id(path) is None, path
        if "://" not in path:  # URLs are read from their bucket (tests/test_gcs.py)
            assert hub.resolve(path, "k") == path
    assert hub.split_id("roberta-base") == ("roberta-base", None)
    assert hub.split_id("Qwen/Qwen2.5-0.5B@refs/pr/1") == ("Qwen/Qwen2.5-0.5B", "refs/pr/1")
    local = tmp_path / "org" / "name"  # an existing local dir wins over the id
    local.mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert hub.resolve("org/name", "k") == "org/name"


def test_convert_mode_from_hub_id(cache, tmp_path):
    result = main.run(load_config("convert.py", "source=org/name"), str(tmp_path / "wd"))
    _, want = hf.load_pretrained(str(cache / "snapshots" / HASH))
    _, got = hf.load_pretrained(result["hf"])
    assert_same(got, want)
    assert os.path.exists(os.path.join(result["hf"], "tokenizer.json"))


def test_bench_model_hub_id_and_presets_win(cache, monkeypatch):
    from lmtransfer import bench

    model, _ = bench.build("org/name", None)
    assert model.config.vocab_size == 99 and model.config.hidden_size == 32

    class Preset(Exception):
        pass

    def from_preset(name, *a, **k):
        raise Preset(name)

    def no_hub(*a, **k):
        raise AssertionError("a preset name was looked up on the hub")

    monkeypatch.setattr(hub, "resolve", no_hub)
    monkeypatch.setattr("lmtransfer.models.from_preset", from_preset)
    with pytest.raises(Preset, match="bert-base"):  # also a valid hub id, but a preset
        bench.build("bert-base", "classification")


@pytest.mark.parametrize("remote,want", [
    (["config.json", "model.safetensors", "pytorch_model.bin", "tf_model.h5", "vocab.txt",
      "flax_model.msgpack", "onnx/model.onnx", "README.md", "tokenizer.json"],
     {"config.json", "model.safetensors", "vocab.txt", "tokenizer.json"}),
    (["config.json", "model.safetensors.index.json", "model-00001-of-00002.safetensors",
      "model-00002-of-00002.safetensors", "pytorch_model.bin.index.json",
      "pytorch_model-00001-of-00002.bin", "merges.txt", "vocab.json"],
     {"config.json", "model.safetensors.index.json", "model-00001-of-00002.safetensors",
      "model-00002-of-00002.safetensors", "merges.txt", "vocab.json"}),
    (["config.json", "pytorch_model.bin", "tf_model.h5", "rust_model.ot", "spm.model"],
     {"config.json", "pytorch_model.bin", "spm.model"}),
])
def test_downloads_only_what_a_model_needs(remote, want, tmp_path, monkeypatch):
    """With a stand-in for `snapshot_download` (the network): one weight format, safetensors
    first, plus config and tokenizer files."""
    from huggingface_hub.utils import filter_repo_objects

    folder = tmp_path / "snapshots" / HASH
    folder.mkdir(parents=True)

    def fake(repo_id, revision=None, allow_patterns=None):
        for f in filter_repo_objects(remote, allow_patterns=allow_patterns):
            (folder / f).parent.mkdir(parents=True, exist_ok=True)
            (folder / f).write_text("x")
        return str(folder)

    monkeypatch.setattr("huggingface_hub.snapshot_download", fake)
    monkeypatch.setattr(hub, "_resolved", {})
    assert hub.resolve("org/remote", "config.init_from") == str(folder)
    assert {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()} == want
