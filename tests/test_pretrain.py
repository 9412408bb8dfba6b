"""Pretraining: corpus reading, packing, masking, objectives, sharded steps and a full run."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lmtransfer import sharding
from lmtransfer.data import batching, corpus
from lmtransfer.data.tables import DataError
from lmtransfer.models import from_preset
from lmtransfer.tasks import make_task
from lmtransfer.tasks.pretrain import mask_tokens, max_predictions
from lmtransfer.train import init
from tests.configs_loader import load_config
from tests.corpus_data import corpus_tokenizer, make_corpus
from tests.test_train_step import run_steps


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = make_corpus(str(tmp_path_factory.mktemp("corpus")))
    for kind in ("wordpiece", "bpe"):
        corpus_tokenizer(root, kind)
    return root


def config_for(root, objective, store="", **data):
    """A tiny pretraining config on the generated corpus; its token store is prepared on first
    use into `store` (default: one per objective under `root`)."""
    model = "gpt-tiny" if objective == "clm" else "tiny"
    kind = "bpe" if objective == "clm" else "wordpiece"
    c = load_config("pretrain.py", f"objective={objective},model={model},"
                                   f"tokenizer={root}/tok_{kind},steps=8")
    c.data.train_files = os.path.join(root, "train.txt")
    c.data.eval_files = os.path.join(root, "eval.jsonl")
    c.data.store = store or os.path.join(root, f"store-{objective}")
    c.data.max_length, c.train.batch_size, c.train.eval_batch_size = 32, 16, 16
    c.model.hidden_dropout_prob = c.model.attention_probs_dropout_prob = 0.0
    c.data.update(data)
    return c


# ------------------------------------------------------------------------------ corpus

def test_documents_by_mode_and_jsonl(tmp_path):
    p = tmp_path / "a.txt"
    p.write_text("one\ntwo\n\n\n  \nthree\n")
    assert list(corpus.file_documents(str(p), "paragraph", "text")) == ["one\ntwo", "three"]
    # line mode: every line is a document; empty ones come through for the builder to count
    assert list(corpus.file_documents(str(p), "line", "text")) == ["one", "two", "", "", "  ",
                                                                   "three"]
    assert list(corpus.file_documents(str(p), "file", "text")) == ["one\ntwo\n\n\n  \nthree\n"]
    j = tmp_path / "b.jsonl"
    j.write_text('{"body": "x y"}\n\n{"body": "z"}\n')
    assert list(corpus.file_documents(str(j), "paragraph", "body")) == ["x y", "z"]
    with pytest.raises(DataError, match=r"b.jsonl:1: not a JSON object with a 'text'"):
        list(corpus.file_documents(str(j), "paragraph", "text"))
    bad = tmp_path / "c.txt"
    bad.write_bytes(b"fine\nbad \xff byte\n")
    with pytest.raises(DataError, match=r"c.txt:2: bytes that are not UTF-8"):
        list(corpus.file_documents(str(bad), "paragraph", "text"))
    assert corpus.resolve_files(f"{tmp_path}/*.txt", "k") == [str(tmp_path / "a.txt"), str(bad)]
    with pytest.raises(DataError, match=r"config.data.train_files: '.*nope\*' matches no file"):
        corpus.resolve_files(f"{tmp_path}/nope*", "config.data.train_files")


def _rows_of(token_lists, layout, tmp_path, seed=0):
    """ShardRows over a one-shard store holding `token_lists` as its documents."""
    from lmtransfer.data import build, store

    path = str(tmp_path / "store")
    os.makedirs(path, exist_ok=True)
    store.write_json(os.path.join(path, "manifest.json"), {
        "format": store.FORMAT, "version": store.VERSION, "num_shards": 1, "dtype": "uint32",
        "tokenizer": {"sha256": "x", "name": "t"}, "source": {}})
    w = build.ShardWriter(path, 0, "uint32")
    enc = [type("E", (), {"ids": t, "word_ids": list(range(len(t)))})() for t in token_lists]
    w.add(list(range(len(token_lists))), enc)
    w.commit(layout)
    return corpus.ShardRows(store.Store(path).shard(0), layout, seed=seed, train=True,
                            word_start=True)


def test_pack_segments_positions_and_long_documents(tmp_path):
    docs = [[5, 6, 7], list(range(10, 30)), [8], [9, 9]]
    rows = _rows_of(docs, corpus.Layout(8, (1,), (2,)), tmp_path)
    out = rows.read(np.arange(len(rows)))
    ids = [list(r[r > 0]) for r in out["input_ids"]]
    # doc 1 (20 tokens) is cut into pieces of 6, none dropped; pieces never straddle rows
    assert sum(len(r) for r in ids) == 5 + (3 * 8 + 4) + 3 + 4
    flat = [t for r in ids for t in r if t not in (1, 2)]
    assert flat == [5, 6, 7] + list(range(10, 30)) + [8, 9, 9]
    for r in range(len(ids)):
        seg, pos = out["segment_ids"][r], out["position_ids"][r]
        for s in set(seg[seg > 0]):
            np.testing.assert_array_equal(pos[seg == s], np.arange((seg == s).sum()))
            assert out["input_ids"][r][seg == s][0] == 1  # each piece starts with its prefix
    assert out["length"].tolist() == [(s > 0).sum() for s in out["segment_ids"]]
    # rows in order: doc 0; doc 1's pieces of 6, 6, 6 and 2 (+ doc 2 beside the last); doc 3
    assert ids[0] == [1, 5, 6, 7, 2] and ids[4] == [1, 28, 29, 2, 1, 8, 2]
    assert ids[5] == [1, 9, 9, 2] and len(ids) == 6
    assert rows.docs([0, 4, 5]) == [[0], [1, 2], [3]]


@pytest.mark.parametrize("arch", ["gpt-tiny", "tiny"])
def test_packed_documents_never_attend_to_each_other(arch):
    model = from_preset(arch, "lm" if arch.startswith("gpt") else "mlm", vocab_size=64,
                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    rng = np.random.default_rng(0)
    a, b = rng.integers(3, 64, (1, 7)), rng.integers(3, 64, (1, 9))
    params = sharding.unbox(model.init(jax.random.key(0), a))["params"]
    row = np.concatenate([a, b, np.zeros((1, 4), int)], 1)
    seg = np.array([[1] * 7 + [2] * 9 + [0] * 4])
    pos = np.array([list(range(7)) + list(range(9)) + [0] * 4])
    packed = model.apply({"params": params}, row, segment_ids=seg, position_ids=pos).logits
    alone_a = model.apply({"params": params}, a).logits
    alone_b = model.apply({"params": params}, b).logits
    np.testing.assert_allclose(packed[0, :7], alone_a[0], atol=2e-5)
    np.testing.assert_allclose(packed[0, 7:16], alone_b[0], atol=2e-5)


def test_rotary_gpt_is_causal_and_remat_is_equal():
    ids = np.random.default_rng(1).integers(0, 1024, (2, 12))
    m = from_preset("gpt-tiny", None, positions="rotary")
    params = sharding.unbox(m.init(jax.random.key(0), ids))["params"]
    assert "position_embeddings" not in params
    out = m.apply({"params": params}, ids).logits
    changed = ids.copy()
    changed[:, 8] = 3
    out2 = m.apply({"params": params}, changed).logits
    np.testing.assert_allclose(out[:, :8], out2[:, :8], atol=1e-6)
    assert np.abs(out[:, 8:] - out2[:, 8:]).max() > 1e-3
    remat = from_preset("gpt-tiny", None, positions="rotary", remat=True)

    def grads(model):
        return jax.grad(lambda p: model.apply({"params": p}, ids).logits.sum())(params)

    for x, y in zip(jax.tree.leaves(grads(m)), jax.tree.leaves(grads(remat)), strict=True):
        np.testing.assert_allclose(x, y, atol=1e-5)


# ------------------------------------------------------------------------------ objectives

def test_mlm_masking_statistics():
    rng = np.random.default_rng(0)
    ids = rng.integers(10, 1000, (64, 256)).astype(np.int32)
    ids[:, 0], ids[:, 100] = 2, 3  # [CLS], [SEP]
    seg = np.ones_like(ids)
    seg[:, 200:] = 0  # padding
    out = jax.jit(lambda k: mask_tokens(k, ids, seg, None, rate=0.15, mask_id=4,
                                        vocab_size=1000, special_ids=[0, 2, 3, 4]))(
        jax.random.key(0))
    chosen = np.asarray(out["mlm_weights"]).astype(bool)
    masked = np.asarray(out["input_ids"])
    maskable = (seg > 0) & (ids > 4)
    assert not chosen[~maskable].any()  # never specials or padding
    assert abs(chosen.sum() / maskable.sum() - 0.15) < 0.01
    became_mask = (masked == 4) & chosen
    kept = (masked == ids) & chosen
    assert abs(became_mask.sum() / chosen.sum() - 0.8) < 0.02
    assert abs(kept.sum() / chosen.sum() - 0.1 - 0.1 / 1000) < 0.02  # + random == original
    assert abs((chosen & ~became_mask & ~kept).sum() / chosen.sum() - 0.1) < 0.02
    np.testing.assert_array_equal(masked[~chosen], ids[~chosen])
    np.testing.assert_array_equal(np.asarray(out["mlm_labels"]), ids)


def test_whole_word_masking_takes_every_piece():
    rng = np.random.default_rng(0)
    ids = rng.integers(10, 1000, (32, 128)).astype(np.int32)
    word_start = rng.random((32, 128)) < 0.4
    word_start[:, 0] = True
    out = mask_tokens(jax.random.key(3), ids, np.ones_like(ids), word_start, rate=0.15,
                      mask_id=4, vocab_size=1000, special_ids=[4])
    chosen = np.asarray(out["mlm_weights"]).astype(bool)
    word = np.cumsum(word_start, 1)
    for r in range(32):
        for w in np.unique(word[r]):
            sel = chosen[r][word[r] == w]
            assert sel.all() or not sel.any()
    assert 0.1 < chosen.mean() < 0.2


def test_mlm_prediction_budget_caps_rows_and_lists_positions():
    assert max_predictions(128, 0.15) == 37 and max_predictions(8, 0.5) == 8
    ids = np.arange(10, 10 + 4 * 32, dtype=np.int32).reshape(4, 32)
    out = mask_tokens(jax.random.key(0), ids, np.ones_like(ids), None, rate=0.5, mask_id=4,
                      vocab_size=1000, special_ids=[4], budget=5)
    chosen = np.asarray(out["mlm_weights"]).astype(bool)
    pos = np.asarray(out["mlm_positions"])
    assert pos.shape == (4, 5) and (chosen.sum(1) == 5).all()  # ~16 drawn per row, 5 kept
    for r in range(4):
        np.testing.assert_array_equal(pos[r], np.flatnonzero(chosen[r]))  # the first 5
    masked = np.asarray(out["input_ids"])
    np.testing.assert_array_equal(masked[~chosen], ids[~chosen])  # the rest stay as they were


def test_mlm_decoder_at_masked_positions_equals_full_decoding(root):
    c = config_for(root, "mlm")
    task = make_task(c, init.load_tokenizer(c))
    model = from_preset("tiny", "mlm", vocab_size=len(task.tokenizer))
    rng = np.random.default_rng(0)
    ids = rng.integers(10, len(task.tokenizer), (3, 24)).astype(np.int32)
    seg = np.ones_like(ids)
    seg[2, 20:] = 0
    batch = task.prepare({"input_ids": jnp.asarray(ids), "segment_ids": jnp.asarray(seg),
                          "weights": jnp.ones(3)}, jax.random.key(1))
    budget = max_predictions(24, 0.15)
    assert batch["mlm_positions"].shape == (3, budget)
    params = model.init(jax.random.key(0), batch["input_ids"])
    full = model.apply(params, batch["input_ids"], segment_ids=batch["segment_ids"])
    sparse = model.apply(params, batch["input_ids"], segment_ids=batch["segment_ids"],
                         mlm_positions=batch["mlm_positions"])
    np.testing.assert_allclose(sparse.logits, jnp.take_along_axis(
        full.logits, batch["mlm_positions"][..., None], axis=1), atol=1e-5)
    dense = {k: v for k, v in batch.items() if k != "mlm_positions"}
    loss, weight = task.loss(sparse, batch)
    expect, expect_weight = task.loss(full, dense)
    assert float(weight) == float(expect_weight) == float(batch["mlm_weights"].sum()) > 0
    assert float(loss) == pytest.approx(float(expect), rel=1e-5)


def test_clm_targets_stay_inside_documents(root):
    c = config_for(root, "clm")
    task = make_task(c, init.load_tokenizer(c))
    ids = jnp.array([[5, 6, 7, 8, 9, 0]])
    seg = jnp.array([[1, 1, 1, 2, 2, 0]])
    logits = jax.random.normal(jax.random.key(0), (1, 6, 20))
    out = type("O", (), {"logits": logits})()
    loss, weight = task.loss(out, {"input_ids": ids, "segment_ids": seg,
                                   "weights": jnp.ones(1)})
    logp = jax.nn.log_softmax(logits)
    expect = -(logp[0, 0, 6] + logp[0, 1, 7] + logp[0, 3, 9])  # 7->8 crosses; 9->pad is none
    assert float(weight) == 3 and float(loss) == pytest.approx(float(expect), rel=1e-6)


# ------------------------------------------------------------------------------ tasks, steps

def test_task_loads_shards_and_fixed_eval_masks(root):
    c = config_for(root, "mlm", whole_word=True)
    task = make_task(c, init.load_tokenizer(c))
    train = task.load("train")
    assert train.num_shards == 8 and sorted(train.shards) == list(range(8))
    docs = []
    for g, rows in train.shards.items():  # a shard's rows hold only its documents
        in_shard = {d for ds in rows.docs(range(len(rows))) for d in ds}
        assert all(d % 8 == g for d in in_shard)
        docs += in_shard
    assert sorted(docs) == list(range(160))  # every document in exactly one shard
    assert len(train) == sum(len(r) for r in train.shards.values())
    dev = task.load("dev")
    assert "mlm_labels" in dev.features and dev.features["mlm_weights"].sum() > 0
    again = task.load("dev")  # eval masks are fixed by the seed
    np.testing.assert_array_equal(dev.features["input_ids"], again.features["input_ids"])


class _FakeRows:
    """ShardRows stand-in: row r of shard g holds the token 1000 * g + r."""

    def __init__(self, g, n):
        self.g, self.n = g, n

    def __len__(self):
        return self.n

    def read(self, rows):
        ids = (1000 * self.g + np.asarray(rows))[:, None].repeat(4, 1).astype(np.int32)
        return {"input_ids": ids, "length": np.full(len(rows), 4, np.int32)}


def test_store_batcher_visits_every_row_once_per_pass():
    mesh = sharding.make_mesh({"data": -1})
    n = [5, 7, 6, 9]
    b = batching.StoreBatcher({g: _FakeRows(g, n[g]) for g in range(4)}, 4, sum(n), 8, mesh)
    seen = {g: [] for g in range(4)}
    for step in range(9):  # 9 steps x 2 rows = 18 draws per shard
        idx = b.train_indices(step, seed=0)
        batch = b.host_batch(idx)
        for g in range(4):
            seen[g] += list(idx[2 * g:2 * g + 2])
            np.testing.assert_array_equal(batch["input_ids"][2 * g:2 * g + 2, 0],
                                          1000 * g + idx[2 * g:2 * g + 2])  # block g: shard g
        np.testing.assert_array_equal(idx, b.train_indices(step, seed=0))  # a pure function
    for g in range(4):
        draws = np.array(seen[g])
        assert ((draws >= 0) & (draws < n[g])).all()
        full_passes = len(draws) // n[g]
        orders = [list(draws[p * n[g]:(p + 1) * n[g]]) for p in range(full_passes)]
        for order in orders:  # every pass is a permutation: no repeats, none missed
            assert sorted(order) == list(range(n[g]))
        assert orders[0] != orders[1]  # and a fresh one each pass
    assert b.train_indices(3, seed=1).tolist() != b.train_indices(3, seed=0).tolist()


def test_feistel_permutation_is_a_bijection_without_a_table():
    from lmtransfer.data.shuffle import permute

    for n in (1, 2, 3, 17, 1000, 4097):
        p = permute(np.arange(n), n, (0, 3, 1))
        assert sorted(p.tolist()) == list(range(n))
    big = permute(np.arange(10), 10**12, (7,))  # a trillion rows: O(1) memory per index
    assert len(set(big.tolist())) == 10 and (big < 10**12).all()
    p = permute(np.arange(1000), 1000, (0,))
    assert abs(np.corrcoef(np.arange(1000), p)[0, 1]) < 0.1  # not close to the identity
    with pytest.raises(ValueError, match="must be in"):
        permute([5], 5, (0,))


@pytest.mark.parametrize("objective", ["clm", "mlm"])
def test_sharded_pretraining_step_equals_single_device(root, objective):
    c = config_for(root, objective)
    c.optim.warmup_steps = 1
    single, single_params, _ = run_steps(c, {"data": 1})
    losses, params, state = run_steps(c, {"data": 2, "fsdp": 2, "tensor": 2})
    wi = state.params["layer_0"]["mlp"]["wi"]["kernel"]
    assert wi.sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor")
    table = "token_embeddings" if objective == "clm" else "embeddings"
    emb = state.params[table]["embedding" if objective == "clm" else "word_embeddings"]
    emb = emb if objective == "clm" else emb["embedding"]
    assert emb.sharding.spec == jax.sharding.PartitionSpec("tensor", "fsdp")
    np.testing.assert_allclose(losses, single, atol=1e-5)
    assert losses[-1] < losses[0]
    for x, y in zip(jax.tree.leaves(params), jax.tree.leaves(single_params), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=2e-5)


def test_config_refuses_mismatched_model():
    with pytest.raises(ValueError, match="objective=clm needs a GPT model; got model=tiny"):
        load_config("pretrain.py", "objective=clm,model=tiny")
    with pytest.raises(ValueError, match="objective=mlm needs a BERT model"):
        load_config("pretrain.py", "objective=mlm,model=gpt-tiny")


def test_tfds_text_corpus_with_mock_data():
    import tensorflow_datasets as tfds

    def source(*args, **kwargs):
        return [{"text": f"sentence number {i}".encode()} for i in range(10)]

    with tfds.testing.mock_data(as_data_source_fn=source):
        src = corpus.Source("tfds", tfds_name="lm1b", tfds_split="train")
        assert src.count() == 10
        got = list(src.documents(shards=[1], num_shards=4))
        assert got == [(1, "sentence number 1"), (5, "sentence number 5"),
                       (9, "sentence number 9")]
        bad = corpus.Source("tfds", tfds_name="lm1b", tfds_split="train", text_field="content")
        with pytest.raises(DataError, match=r"lm1b\[train\]\[0\] has no 'content' feature"):
            next(bad.documents())


def test_metrics_jsonl_is_written_by_the_loop_only_once_per_step(root, tmp_path):
    """A short CLM run end to end: tokenizer trained into the workdir, eval loss/perplexity."""
    from lmtransfer import main

    c = config_for(root, "clm")
    c.model.tokenizer, c.data.store = "bpe", ""  # a tokenizer and a store in the workdir
    c.data.vocab_size = 300
    c.train.steps, c.train.eval_every, c.train.log_every = 6, 3, 1
    res = main.run(c, str(tmp_path))
    assert os.path.exists(tmp_path / "tokenizer" / "tokenizer.json")
    assert os.path.exists(tmp_path / "store" / "train" / "shard-00007.json")
    dev = res["final"]["dev"]
    assert dev["perplexity"] == pytest.approx(np.exp(dev["loss"]), rel=1e-6)
    assert 0 <= dev["accuracy"] <= 100 and dev["predicted_tokens"] > 0
    steps = [json.loads(x)["step"] for x in open(tmp_path / "metrics.jsonl")
             if json.loads(x)["kind"] == "train"]
    assert steps == list(range(1, 7))


def test_fine_tune_from_own_pretrained_bert(root, tmp_path):
    """MLM pretraining -> its workdir is `init_from` for a classifier: the encoder and the
    trained tokenizer carry over, the classification head and pooler start fresh."""
    from flax import traverse_util

    from lmtransfer import checkpoints, main
    from tests.glue_data import make_glue

    c = config_for(root, "mlm")
    c.model.tokenizer, c.data.vocab_size, c.data.store = "wordpiece", 300, ""
    c.train.steps, c.train.eval_every = 4, 0
    main.run(c, str(tmp_path / "mlm"))
    _, pretrained, meta = checkpoints.load_model(str(tmp_path / "mlm"))
    assert meta["head"] == "mlm"

    ft = load_config("glue.py", f"task=sst2,model={tmp_path / 'mlm'}")
    ft.data.dir = make_glue(str(tmp_path / "glue"), n_train=32)
    tok = init.load_tokenizer(ft)
    assert tok.name_or_path == str(tmp_path / "mlm" / "tokenizer")
    mesh = sharding.make_mesh({"data": -1})
    task = make_task(ft, tok)
    model, params = init.build(ft, task, tok, mesh, sharding.DEFAULT_RULES)
    assert model.head == "classification"
    flat = traverse_util.flatten_dict(jax.device_get(params), sep="/")
    src = traverse_util.flatten_dict(jax.device_get(pretrained), sep="/")
    encoder = [k for k in flat if k.startswith(("layer_", "embeddings/"))]
    assert encoder and all(np.array_equal(flat[k], src[k]) for k in encoder)
    assert "classifier/kernel" in flat and "classifier/kernel" not in src


@pytest.mark.parametrize("mode", ["sop", "nsp"])
def test_sentence_pair_rows(mode, tmp_path):
    docs = [list(range(10, 40)), list(range(100, 107)), [7], list(range(200, 260))]
    rows = _rows_of(docs, corpus.Layout(16, (1,), (2,), pairs=mode), tmp_path)
    assert rows.index_info == {"one-token spans (cannot be split into a sentence pair)": 1}
    out = rows.read(np.arange(len(rows)))
    np.testing.assert_array_equal(out["input_ids"], rows.read(np.arange(len(rows)))[
        "input_ids"])  # a row is the same whenever it is read
    labels = out["pair_label"]
    assert 0 < labels.mean() < 1
    for r in range(len(labels)):
        ids, types = out["input_ids"][r], out["token_type_ids"][r]
        n = out["length"][r]
        assert ids[0] == 1 and ids[n - 1] == 2 and (ids[n:] == 0).all()
        first_sep = list(ids).index(2)
        a, b = ids[1:first_sep], ids[first_sep + 1:n - 1]
        assert (types[:first_sep + 1] == 0).all() and (types[first_sep + 1:n] == 1).all()
        assert len(a) and len(b)
        same_doc = a[0] // 100 == b[0] // 100 if min(a[0], b[0]) >= 100 else (
            (a[0] < 100) == (b[0] < 100))
        if mode == "sop":  # one document; label 1 <=> B comes before A
            assert same_doc and (labels[r] == 1) == (b[-1] < a[0])
        elif labels[r] == 0:  # nsp: label 0 <=> B is A's continuation
            assert b[0] == a[-1] + 1
        else:  # nsp label 1: B comes from another document
            assert not same_doc


def test_mlm_with_sentence_order_prediction_trains(root, tmp_path):
    from lmtransfer import main

    c = config_for(root, "mlm", sentence_pairs="sop")
    c.train.steps, c.train.eval_every = 3, 0
    res = main.run(c, str(tmp_path))
    dev = res["final"]["dev"]
    assert 0 <= dev["sop_accuracy"] <= 100 and dev["sop_loss"] > 0 and dev["loss"] > 0


def test_continued_mlm_pretraining_of_packaged_minilm(root, tmp_path, minilm_path):
    """model=minilm: the real encoder and its tokenizer, a fresh MLM head (MiniLM ships none)."""
    from lmtransfer import checkpoints, hf, main

    c = load_config("pretrain.py", "objective=mlm,model=minilm,steps=2")
    assert c.init_from == hf.packaged_minilm() and c.model.tokenizer == ""
    c.data.train_files = os.path.join(root, "train.txt")
    c.data.eval_files = os.path.join(root, "eval.jsonl")
    c.data.max_length, c.train.batch_size, c.train.eval_batch_size = 32, 8, 32
    c.train.eval_every = 0
    res = main.run(c, str(tmp_path))
    assert res["final"]["dev"]["loss"] > 0
    _, params, meta = checkpoints.load_model(str(tmp_path))
    assert meta["head"] == "mlm" and meta["config"]["hidden_size"] == 384
    assert params["mlm"]["bias"].shape == (30522,)


def test_rotary_from_the_config(root):
    c = config_for(root, "clm")
    c.model.positions = "rotary"
    tok = init.load_tokenizer(c)
    mesh = sharding.make_mesh({"data": -1})
    model, params = init.build(c, make_task(c, tok), tok, mesh, sharding.DEFAULT_RULES)
    assert model.config.positions == "rotary" and "position_embeddings" not in params
    assert model.config.vocab_size % 128 == 0 and model.config.vocab_size >= len(tok)


def test_task_reads_tfds_text_with_a_held_out_dev(root, tmp_path):
    import tensorflow_datasets as tfds

    def source(*args, **kwargs):
        return [{"text": f"the king speaks to the queen number {i}".encode()} for i in range(40)]

    c = config_for(root, "clm", store=str(tmp_path / "store"), source="tfds",
                   tfds_name="lm1b", eval_fraction=0.25, prepare_workers=1)
    with tfds.testing.mock_data(as_data_source_fn=source):
        task = make_task(c, init.load_tokenizer(c))
        train, dev = task.load("train"), task.load("dev")
    docs = {d for r in train.shards.values() for ds in r.docs(range(len(r))) for d in ds}
    assert docs == set(range(30))
    assert {d for e in dev.examples for d in e["docs"]} == set(range(10))  # renumbered 30..39
    c.data.max_examples.train = 5
    with pytest.raises(ValueError, match="max_examples is not used by pretraining"):
        make_task(c, init.load_tokenizer(c))
