"""The token store: prepared once (in parallel, resumable after kill -9), read by row, and
every kind of bad store refused with one error that names the file and the fix."""

import glob
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from lmtransfer import prepare
from lmtransfer.data import store
from lmtransfer.tasks import make_task
from lmtransfer.train import init
from tests.configs_loader import load_config
from tests.corpus_data import corpus_tokenizer, make_corpus

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = make_corpus(str(tmp_path_factory.mktemp("corpus")), n_train=400)
    corpus_tokenizer(root, "wordpiece")
    return root


def config_for(root, **data):
    c = load_config("pretrain.py", f"objective=mlm,model=tiny,tokenizer={root}/tok_wordpiece,"
                                   "steps=4")
    c.data.train_files = os.path.join(root, "train.txt")
    c.data.eval_files = os.path.join(root, "eval.jsonl")
    c.data.max_length, c.train.batch_size, c.train.eval_batch_size = 32, 16, 16
    c.data.update(data)
    return c


def fingerprint(path):
    """Every shard's JSON (counts and block checksums of every file) and index JSON."""
    return {os.path.basename(f): json.load(open(f)) for f in
            sorted(glob.glob(os.path.join(path, "shard-*.json")))}


def prepare_cmd(root, out, *extra):
    return [sys.executable, "-m", "lmtransfer.prepare", "--config",
            f"configs/pretrain.py:objective=mlm,model=tiny,tokenizer={root}/tok_wordpiece",
            f"--config.data.train_files={root}/train.txt",
            f"--config.data.eval_files={root}/eval.jsonl", "--config.data.max_length=32",
            "--out", str(out), *extra]


def test_parallel_and_interrupted_prepares_give_the_same_store(root, tmp_path):
    """One worker, two workers, and a prepare killed (-9) mid-shard then rerun: the same
    shards, byte for byte (block checksums); the killed shard is never read half-written."""
    c = config_for(root)
    one = prepare.prepare(c, str(tmp_path / "one"), workers=1, progress=False)
    two = prepare.prepare(c, str(tmp_path / "two"), workers=2, progress=False)
    ref = fingerprint(one["train"])
    assert len([k for k in ref if re.fullmatch(r"shard-\d+\.json", k)]) == 8
    assert fingerprint(two["train"]) == ref
    assert fingerprint(two["dev"]) == fingerprint(one["dev"])

    env = {**os.environ, "LMTRANSFER_KILL_AT": "prepare:5", "JAX_PLATFORMS": "cpu"}
    out = tmp_path / "killed"
    r = subprocess.run(prepare_cmd(root, out, "--workers=1"), cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == -9, r.stderr[-2000:]
    st = store.Store(str(out / "train"))
    assert st.missing(range(8)) == [5, 6, 7]  # shard 5 has its files but is not complete
    assert os.path.exists(out / "train" / "shard-00005.tokens.bin")
    with pytest.raises(store.StoreError, match=r"lacks 3 of its 8 shards \(shard-00005.json"):
        st.check(st.manifest["tokenizer"]["sha256"], range(8))
    env.pop("LMTRANSFER_KILL_AT")
    r = subprocess.run(prepare_cmd(root, out, "--workers=2"), cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "8 shards (3 to build) with 2 worker(s)" in r.stderr
    assert fingerprint(out / "train") == ref
    assert not glob.glob(str(out / "train" / "*.tmp"))


def test_host_parts_and_shard_lists():
    assert prepare.parse_shards("", 8) == list(range(8))
    assert [prepare.parse_shards(f"{i}/4", 8) for i in range(4)] == [[0, 1], [2, 3], [4, 5],
                                                                      [6, 7]]
    assert prepare.parse_shards("0-2,6", 8) == [0, 1, 2, 6]
    with pytest.raises(ValueError, match=r"--shards='9': shards \[9\] are not in 0..7"):
        prepare.parse_shards("9", 8)
    with pytest.raises(ValueError, match="use i/n"):
        prepare.parse_shards("4/4", 8)


def test_prepare_then_train_from_the_store_never_tokenizes_again(root, tmp_path):
    """The two-step workflow: the train run reads only the store (no raw files configured)."""
    from lmtransfer import main

    c = config_for(root)
    c.model.tokenizer, c.data.vocab_size = "wordpiece", 300
    prepared = prepare.prepare(c, str(tmp_path / "store"), progress=False)
    assert os.path.exists(tmp_path / "store" / "tokenizer" / "tokenizer.json")
    t = config_for(root, store=prepared["store"], train_files="", eval_files="")
    t.model.tokenizer, t.data.vocab_size = "wordpiece", 300
    t.train.eval_every = 0
    res = main.run(t, str(tmp_path / "run"))
    assert res["final"]["dev"]["loss"] > 0
    # the store's tokenizer became the run's (fine-tuning from this workdir finds it)
    assert (open(tmp_path / "run" / "tokenizer" / "tokenizer.json").read()
            == open(tmp_path / "store" / "tokenizer" / "tokenizer.json").read())
    rows = [json.loads(x) for x in open(tmp_path / "run" / "metrics.jsonl")]
    train = [r for r in rows if r["kind"] == "train"]
    assert train and all(r["data_wait_s"] >= 0 for r in train)


def test_empty_documents_are_counted_and_no_text_is_an_error(root, tmp_path):
    lines = tmp_path / "lines.txt"
    lines.write_text("the king speaks\n\n   \nthe queen speaks\n")
    c = config_for(root, train_files=str(lines), document="line", shards=1)
    st = prepare.prepare_split(c, init.load_tokenizer(c), make_task(
        c, init.load_tokenizer(c), str(tmp_path)).layout, str(tmp_path / "s"), "train",
        progress=False)
    meta = json.load(open(os.path.join(st.path, "shard-00000.json")))
    assert meta["documents"] == 2 and meta["skipped"] == {"empty documents": 2}
    empty = tmp_path / "empty.txt"
    empty.write_text("\n   \n\n")
    c = config_for(root, train_files=str(empty), document="line", shards=1)
    with pytest.raises(store.StoreError, match=r"config.data.train_files=.*empty.txt: the "
                       r"corpus has no text .*skipped: 3 empty documents"):
        prepare.prepare_split(c, init.load_tokenizer(c), make_task(
            c, init.load_tokenizer(c), str(tmp_path)).layout, str(tmp_path / "e"), "train",
            progress=False)


@pytest.fixture()
def prepared(root, tmp_path):
    c = config_for(root)
    prepare.prepare(c, str(tmp_path / "store"), progress=False)
    t = config_for(root, store=str(tmp_path / "store"), train_files="", eval_files="")
    return t, tmp_path / "store" / "train"


def load_train(config):
    return make_task(config, init.load_tokenizer(config)).load("train")


def test_store_of_another_tokenizer_is_refused(root, prepared, tmp_path):
    t, _ = prepared
    other = make_corpus(str(tmp_path / "other"), n_train=50, seed=1)
    t.model.tokenizer = corpus_tokenizer(other, "wordpiece", vocab_size=150).name_or_path
    with pytest.raises(store.StoreError, match=r"train was built with another tokenizer "
                       r"\(.*tok_wordpiece, sha256 \w+\) than this run's .*rebuild it with: "
                       r"python -m lmtransfer.prepare"):
        load_train(t)


def test_store_missing_a_shard_is_refused(prepared):
    t, path = prepared
    os.remove(path / "shard-00003.json")
    with pytest.raises(store.StoreError, match=r"lacks 1 of its 8 shards \(shard-00003.json\)"
                       r": it was not fully prepared"):
        load_train(t)


def test_truncated_shard_is_refused(prepared):
    t, path = prepared
    f = path / "shard-00002.tokens.bin"
    with open(f, "r+b") as fh:
        fh.truncate(os.path.getsize(f) - 2)
    with pytest.raises(store.StoreError, match=r"shard-00002.tokens.bin is \d+ bytes but its "
                       r"shard's JSON says \d+ \(truncated or overwritten\); rebuild it with"):
        load_train(t)


def test_corrupt_shard_is_refused_when_read(prepared):
    t, path = prepared
    f = path / "shard-00004.tokens.bin"
    data = bytearray(open(f, "rb").read())
    data[5] ^= 0xFF
    open(f, "wb").write(bytes(data))
    split = load_train(t)  # opening reads only the JSON files
    with pytest.raises(store.StoreError, match=r"shard-00004.tokens.bin: block 0 .* fails its "
                       r"checksum: the file is corrupt; rebuild it with"):
        split.shards[4].read(np.arange(len(split.shards[4])))
    split.shards[3].read(np.arange(len(split.shards[3])))  # the others read fine


def test_store_of_other_sources_is_not_mixed(root, prepared, tmp_path):
    t, path = prepared
    other = make_corpus(str(tmp_path / "other"), n_train=50, seed=1)
    t.data.train_files = os.path.join(other, "train.txt")
    t.data.eval_files = os.path.join(root, "eval.jsonl")
    with pytest.raises(store.StoreError, match=r"holds a token store of other data or settings "
                       r"\(differs in: source\)"):
        load_train(t)


def test_store_with_another_shard_count_is_refused(prepared):
    t, _ = prepared
    t.data.shards = 4
    with pytest.raises(store.StoreError, match=r"has 8 shards but config.data.shards=4; set "
                       r"config.data.shards=8"):
        load_train(t)


def test_prepare_mode_of_the_main_command(root, tmp_path):
    """`--config.mode=prepare` through lmtransfer.main (what run_tpu.sh launches on every
    host): the workdir becomes the store, the same store the prepare command builds."""
    from lmtransfer import main

    c = config_for(root)
    c.mode = "prepare"
    res = main.run(c, str(tmp_path / "store"))
    assert res["train_shards"] == list(range(8)) and res["built"]["train"]["tokens"] > 0
    ref = prepare.prepare(config_for(root), str(tmp_path / "ref"), progress=False)
    assert fingerprint(res["train"]) == fingerprint(ref["train"])
    again = main.run(c, str(tmp_path / "store"))  # complete: nothing to build
    assert again["built"] == {"train": None, "dev": None}
