"""Pretraining objectives as task plug-ins: causal LM (GPT) and masked LM (BERT).

  clm  L = -sum_i log P(w_i | w_<i) over packed rows; a document's first token has no target
       and nothing is predicted across documents (segment_ids).
  mlm  BERT's masked LM: each maskable token is chosen with probability `mask_rate` (0.15);
       chosen tokens become [MASK] 80%, a random token 10%, unchanged 10%; loss on the chosen
       tokens only. `whole_word` chooses whole words (all their word pieces) instead. The
       decoder runs on `max_predictions` positions per row (see `max_predictions`); a row
       never has more chosen tokens than that (extra ones stay unmasked).
       Training masks are drawn on the device from (seed, step) each step (dynamic masking,
       exact on resume); eval masks are drawn once per split from the seed, so eval loss is
       comparable between runs, batch sizes and meshes.
       `sentence_pairs=nsp|sop` adds BERT's next-sentence or ALBERT's sentence-order
       prediction on `[CLS] A [SEP] B [SEP]` rows (lmtransfer.data.corpus.ShardRows);
       its summed loss is weighted by mask_rate x max_length (the expected masked tokens per
       row), so the two objectives count about equally, as BERT's mean + mean does, while
       sums still add exactly over microbatches.

Eval reports the token-weighted loss, perplexity = exp(loss) and accuracy (predicted token ==
target) over the predicted tokens.

Data: the corpus is tokenized once into a token store (lmtransfer.data.store, built by
lmtransfer.prepare, or by the first start of a train run into `<workdir>/store`); train rows
are cut from it on demand by step (lmtransfer.data.batching.StoreBatcher), so start-up and
memory do not grow with the corpus and a resume never tokenizes again.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lmtransfer import paths, sharding, tokenization
from lmtransfer.data import batching, corpus
from lmtransfer.data import store as store_lib
from lmtransfer.errors import ConfigError
from lmtransfer.tasks.base import Split, Task

log = logging.getLogger(__name__)

OBJECTIVES = {"clm": "lm", "mlm": "mlm"}  # objective -> model head


def has_sources(data) -> bool:
    """Does the config name raw text (files or a TFDS data set) to prepare a store from?"""
    return bool(data.train_files if data.source == "files" else data.tfds_name)


def store_root(config, workdir: str | None) -> str:
    """config.data.store, else `<workdir>/store` (prepared there on the first start)."""
    if config.data.store:
        return config.data.store
    if not workdir:
        raise ConfigError("pretraining reads a token store: set config.data.store (built by "
                          "python -m lmtransfer.prepare) or run with a --workdir")
    return os.path.join(workdir, "store")


def _sync(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices(name)


def corpus_tokenizer(config, workdir: str):
    """The tokenizer trained on the train corpus (`config.model.tokenizer` = wordpiece | bpe)
    and kept in `<workdir>/tokenizer` (reused on resume and by fine-tuning): copied from the
    store when it was prepared with one, else trained by process 0 on the first
    `config.data.tokenizer_docs` documents (all when 0), streamed."""
    out = os.path.join(workdir, "tokenizer")
    if jax.process_index() == 0 and not paths.exists(os.path.join(out, "tokenizer.json")):
        shipped = os.path.join(config.data.store, "tokenizer") if config.data.store else ""
        with paths.local_dir_for(out, last=("tokenizer.json",)) as tmp:
            _make_tokenizer(config, shipped, tmp)
    _sync("lmtransfer:tokenizer")
    return tokenization.load_tokenizer(out)


def _make_tokenizer(config, shipped: str, tmp: str) -> None:
    """Fills `tmp` with the store's tokenizer, or one trained on the corpus."""
    if shipped and paths.exists(os.path.join(shipped, "tokenizer.json")):
        shutil.copytree(paths.local_copy(shipped), tmp, dirs_exist_ok=True)
    elif has_sources(config.data):
        src = corpus.sources(config.data, "train")
        n = config.data.tokenizer_docs or None
        log.info("training a %s tokenizer (vocab %d) on %s documents of %s",
                 config.model.tokenizer, config.data.vocab_size, n or "all", src.name)
        texts = itertools.islice((t for _, t in src.documents() if t.strip()), n)
        tokenization.train_tokenizer(config.model.tokenizer, texts,
                                     config.data.vocab_size, tmp)
    else:
        raise ConfigError(
            f"config.model.tokenizer={config.model.tokenizer} trains a tokenizer on the "
            f"corpus, but config.data.store={config.data.store!r} has no tokenizer/ and "
            "no raw text is configured: set config.model.tokenizer to the tokenizer dir "
            "the store was built with")


def max_predictions(length: int, rate: float) -> int:
    """Positions the MLM decoder runs on per row: the expected chosen tokens + 4 standard
    deviations (a row of 128 tokens exceeds it with probability ~2e-5), at most `length`.

    Like the original BERT's max_predictions_per_seq, this spares the vocabulary projection
    (over half of MiniLM's MLM FLOPs) at the ~85% of positions that have no target.
    """
    mean = rate * length
    return min(length, math.ceil(mean + 4 * math.sqrt(mean * (1 - rate))) + 1)


def mlm_positions(chosen, budget: int):
    """(chosen capped at `budget` per row (the first ones kept), [B, budget] indices of the
    kept tokens in order, then 0s: a position every row has, so a batch cut to a shorter
    length bucket keeps valid indices)."""
    chosen &= jnp.cumsum(chosen, axis=-1) <= budget
    pos = jnp.argsort(~chosen, axis=-1, stable=True)[:, :budget]
    filled = jnp.arange(budget) < jnp.sum(chosen, axis=-1, keepdims=True)
    return chosen, jnp.where(filled, pos, 0).astype(jnp.int32)


def mask_tokens(rng, input_ids, segment_ids, word_start, *, rate: float, mask_id: int,
                vocab_size: int, special_ids, budget: int | None = None) -> dict:
    """BERT masking of a [B, T] batch (jit-traceable): returns the masked input_ids,
    mlm_labels (the original ids) and mlm_weights (1 where a token was chosen). With a
    `budget`, at most that many tokens per row are chosen (any beyond stay unmasked and
    unpredicted) and mlm_positions [B, budget] lists them for the decoder."""
    k_choose, k_how, k_random = jax.random.split(rng, 3)
    u = jax.random.uniform(k_choose, input_ids.shape)
    if word_start is not None:  # each token takes the draw of its word's first piece
        t = jnp.arange(input_ids.shape[-1])
        first = jax.lax.cummax(jnp.where(word_start, t, 0), axis=input_ids.ndim - 1)
        u = jnp.take_along_axis(u, first, axis=-1)
    maskable = (segment_ids > 0) & ~jnp.isin(input_ids, jnp.asarray(special_ids))
    chosen = (u < rate) & maskable
    if budget is not None:
        chosen, positions = mlm_positions(chosen, budget)
    how = jax.random.uniform(k_how, input_ids.shape)
    random_ids = jax.random.randint(k_random, input_ids.shape, 0, vocab_size, input_ids.dtype)
    masked = jnp.where(chosen & (how < 0.8), mask_id,
                       jnp.where(chosen & (how >= 0.9), random_ids, input_ids))
    out = {"input_ids": masked, "mlm_labels": input_ids,
           "mlm_weights": chosen.astype(jnp.float32)}
    if budget is not None:
        out["mlm_positions"] = positions
    return out


class PretrainTask(Task):
    num_labels = 0
    main_metric = "loss"
    greater_is_better = False

    def __init__(self, config, tokenizer, workdir: str | None = None):
        self.config, self.data, self.tokenizer = config, config.data, tokenizer
        self.workdir = workdir
        if config.data.max_examples.train or config.data.max_examples.dev:
            raise ConfigError("config.data.max_examples is not used by pretraining: choose the "
                              "documents with train_files / eval_files and the length with "
                              "config.train.steps")
        self.objective = config.task
        self.head = OBJECTIVES[self.objective]
        tok = tokenizer
        if self.objective == "mlm":
            if tok.mask_token_id is None or tok.cls_token_id is None or tok.sep_token_id is None:
                raise ConfigError("masked LM needs a tokenizer with [MASK], [CLS] and [SEP] "
                                  "(config.model.tokenizer=wordpiece or a BERT tokenizer dir)")
            self.prefix, self.suffix = [tok.cls_token_id], [tok.sep_token_id]
        else:
            end = tok.eos_token_id if tok.eos_token_id is not None else tok.sep_token_id
            if end is None:
                raise ConfigError("causal LM needs an end-of-text (eos) or [SEP] token in the "
                                  "tokenizer to end each document")
            self.prefix, self.suffix = [], [end]
        self.special_ids = sorted(set(tok.all_special_ids))
        self.whole_word = self.objective == "mlm" and bool(self.data.whole_word)
        self.pairs = self.data.sentence_pairs if self.objective == "mlm" else ""
        if self.data.sentence_pairs and not self.pairs:
            raise ConfigError("config.data.sentence_pairs needs objective=mlm")
        if self.pairs and self.whole_word:
            raise ConfigError("config.data.whole_word with sentence_pairs is not supported; "
                              "turn one of them off")
        if self.pairs:
            self.head = "pretraining"

    def eval_splits(self):
        return ("dev",)

    def test_splits(self):
        return ()

    @property
    def layout(self) -> corpus.Layout:
        """How the store's documents become this task's rows."""
        return corpus.Layout(self.data.max_length, tuple(self.prefix), tuple(self.suffix),
                             self.pairs)

    def _store(self, split: str, shards: list[int]) -> store_lib.Store:
        """The store of `split` holding `shards`: prepared (missing shards only) when the
        config names raw text, else opened as it is; checked against this tokenizer."""
        path = os.path.join(store_root(self.config, self.workdir), split)
        if has_sources(self.data):
            from lmtransfer import prepare

            builder = split == "train" or jax.process_index() == 0
            if builder:
                prepare.prepare_split(
                    self.config, self.tokenizer, self.layout, path, split, shards,
                    self.data.prepare_workers,
                    command=f"rerun the train command, which prepares {path} on start",
                    progress=jax.process_index() == 0)
            _sync(f"lmtransfer:store:{split}")
        st = store_lib.Store(path)
        if split == "train" and st.num_shards != self.data.shards:
            raise store_lib.StoreError(
                f"{st.path} has {st.num_shards} shards but config.data.shards="
                f"{self.data.shards}; set config.data.shards={st.num_shards}")
        st.check(store_lib.tokenizer_hash(self.tokenizer), shards, self.tokenizer.name_or_path)
        return st

    def load(self, split: str) -> Split:
        if split == "train":
            mesh = sharding.make_mesh(self.config.mesh.to_dict())
            owned = batching.owned_shards(mesh, self.config.train.batch_size, self.data.shards)
            st = self._store("train", owned)
        else:
            st, owned = self._store(split, [0]), [0]
        shards = {g: corpus.ShardRows(st.shard(g), self.layout, seed=self.config.seed,
                                      train=split == "train", word_start=self.whole_word)
                  for g in owned}
        rows = sum(len(r) for r in shards.values())
        skipped = {}
        for r in shards.values():
            for k, v in r.index_info.items():
                skipped[k] = skipped.get(k, 0) + v
        if any(skipped.values()):
            log.warning("%s: not used: %s (config.data.sentence_pairs)", split,
                        ", ".join(f"{v} {k}" for k, v in skipped.items()))
        log.info("%s: %d documents of %s -> %d rows of %d tokens%s", split,
                 sum(r.shard.num_docs for r in shards.values()), st.path, rows,
                 self.data.max_length,
                 f", shards {owned} of {st.num_shards}" if split == "train" else "")
        if split == "train":
            total = rows
            if jax.process_count() > 1:
                from jax.experimental import multihost_utils
                total = int(multihost_utils.process_allgather(np.array(rows)).sum())
            return Split(split, {}, [], labelled=True, shards=shards, num_shards=st.num_shards,
                         total_rows=total)
        dev = shards[0]
        features = dev.read(np.arange(len(dev)))
        examples = [{"docs": d} for d in dev.docs(range(len(dev)))]
        if self.objective == "mlm":
            features.update(self._fixed_masks(features))
        return Split(split, features, examples, labelled=True)

    def _masks(self, rng, batch):
        return mask_tokens(rng, batch["input_ids"], batch["segment_ids"],
                           batch.get("word_start") if self.whole_word else None,
                           rate=self.data.mask_rate, mask_id=self.tokenizer.mask_token_id,
                           vocab_size=len(self.tokenizer), special_ids=self.special_ids,
                           budget=self.decoded_per_row(batch["input_ids"].shape[-1]))

    def decoded_per_row(self, length: int) -> int | None:
        """config.data.max_predictions resolved for rows of `length` (None: every position)."""
        if self.objective != "mlm" or not self.data.max_predictions:
            return None
        if self.data.max_predictions < 0:
            return max_predictions(length, self.data.mask_rate)
        return min(length, self.data.max_predictions)

    def _fixed_masks(self, features):
        keys = ("input_ids", "segment_ids") + (("word_start",) if self.whole_word else ())
        batch = {k: jnp.asarray(features[k]) for k in keys}
        rng = jax.random.key(self.config.seed + 1)
        return jax.tree.map(np.asarray, jax.jit(self._masks)(rng, batch))

    def prepare(self, batch, rng):
        if self.objective != "mlm":
            return batch
        return {**batch, **self._masks(rng, batch)}

    def _targets(self, outputs, batch):
        """(logits, targets, weights) of the predicted positions."""
        if self.objective == "mlm":
            labels, w = batch["mlm_labels"], batch["mlm_weights"]
            if "mlm_positions" in batch:  # logits at these positions only
                pos = batch["mlm_positions"]
                labels = jnp.take_along_axis(labels, pos, axis=1)
                w = jnp.take_along_axis(w, pos, axis=1)
            return outputs.logits, labels, w * batch["weights"][:, None]
        seg = batch["segment_ids"]
        w = ((seg[:, 1:] == seg[:, :-1]) & (seg[:, 1:] > 0)).astype(jnp.float32)
        return outputs.logits[:, :-1], batch["input_ids"][:, 1:], w * batch["weights"][:, None]

    def _pair_loss(self, outputs, batch):
        """Per-row sentence-pair cross-entropy and hits (weight-0 rows give 0)."""
        logits = outputs.seq_relationship_logits
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["pair_label"])
        hit = (jnp.argmax(logits, -1) == batch["pair_label"]).astype(jnp.float32)
        return ce * batch["weights"], hit * batch["weights"]

    def loss(self, outputs, batch):
        logits, targets, w = self._targets(outputs, batch)
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
        total = jnp.sum(ce * w)
        if self.pairs:
            total += self.data.mask_rate * self.data.max_length * jnp.sum(
                self._pair_loss(outputs, batch)[0])
        return total, jnp.sum(w)

    def predict(self, outputs, batch):
        logits, targets, w = self._targets(outputs, batch)
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
        hit = (jnp.argmax(logits, -1) == targets).astype(jnp.float32)
        out = {"nll": jnp.sum(ce * w, -1), "tokens": jnp.sum(w, -1),
               "correct": jnp.sum(hit * w, -1)}
        if self.pairs:
            out["pair_nll"], out["pair_correct"] = self._pair_loss(outputs, batch)
        return out

    def evaluate(self, split, predictions):
        tokens = float(predictions["tokens"].sum())
        if not tokens:
            raise ValueError(f"{split.name}: no token was predicted (empty split?)")
        loss = float(predictions["nll"].sum()) / tokens
        out = {"loss": loss, "perplexity": math.exp(min(loss, 700.0)),
                "accuracy": 100 * float(predictions["correct"].sum()) / tokens,
                "predicted_tokens": tokens}
        if self.pairs:
            out[f"{self.pairs}_loss"] = float(predictions["pair_nll"].mean())
            out[f"{self.pairs}_accuracy"] = 100 * float(predictions["pair_correct"].mean())
        return out

    def write_predictions(self, split, predictions, out_dir):
        return []  # per-token predictions of a corpus are not worth their disk
