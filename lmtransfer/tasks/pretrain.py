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
       prediction on `[CLS] A [SEP] B [SEP]` rows (lmtransfer.data.corpus.sentence_pairs);
       its summed loss is weighted by mask_rate x max_length (the expected masked tokens per
       row), so the two objectives count about equally, as BERT's mean + mean does, while
       sums still add exactly over microbatches.

Eval reports the token-weighted loss, perplexity = exp(loss) and accuracy (predicted token ==
target) over the predicted tokens. The corpus side is lmtransfer.data.corpus.
"""

from __future__ import annotations

import logging
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lmtransfer import sharding, tokenization
from lmtransfer.data import batching, corpus
from lmtransfer.tasks.base import Split, Task

log = logging.getLogger(__name__)

OBJECTIVES = {"clm": "lm", "mlm": "mlm"}  # objective -> model head


def load_corpus(data, split: str) -> corpus.Corpus:
    """The documents of `split` ('train' or 'dev') from files or TFDS, with the dev split
    taken from the end of the train documents when `eval_fraction` > 0."""
    if data.source == "files":
        spec, key = ((data.train_files, "config.data.train_files") if split == "train" or
                     not data.eval_files else (data.eval_files, "config.data.eval_files"))
        docs = corpus.from_files(spec, key, data.document, data.text_field)
    elif data.source == "tfds":
        name = data.tfds_train_split if split == "train" or not data.tfds_eval_split else (
            data.tfds_eval_split)
        docs = corpus.from_tfds(data.tfds_name, name, data.tfds_data_dir, data.text_field)
    else:
        raise ValueError(f"config.data.source={data.source!r}; use files or tfds")
    held_out = (data.source == "files" and not data.eval_files) or (
        data.source == "tfds" and not data.tfds_eval_split)
    if not held_out:
        return docs
    if not 0 < data.eval_fraction < 1:
        raise ValueError("no eval data: set config.data.eval_files (or tfds_eval_split) or "
                         "config.data.eval_fraction in (0, 1)")
    cut = len(docs) - max(1, int(round(len(docs) * data.eval_fraction)))
    if cut < 1:
        raise ValueError(f"{docs.name}: {len(docs)} documents are too few to hold out "
                         f"eval_fraction={data.eval_fraction}")
    return corpus.subset(docs, 0, cut) if split == "train" else corpus.subset(docs, cut, len(docs))


def corpus_tokenizer(config, workdir: str):
    """The tokenizer trained on the train corpus (`config.model.tokenizer` = wordpiece | bpe),
    saved in `<workdir>/tokenizer` by process 0 and reused when it exists (resume)."""
    out = os.path.join(workdir, "tokenizer")
    if jax.process_index() == 0 and not os.path.exists(os.path.join(out, "tokenizer.json")):
        docs = load_corpus(config.data, "train")
        n = min(len(docs), config.data.tokenizer_docs or len(docs))
        log.info("training a %s tokenizer (vocab %d) on %d documents of %s",
                 config.model.tokenizer, config.data.vocab_size, n, docs.name)
        tmp = out + ".tmp"
        tokenization.train_tokenizer(config.model.tokenizer,
                                     (t for a in range(0, n, 1000)
                                      for t in docs.get(range(a, min(a + 1000, n)))),
                                     config.data.vocab_size, tmp)
        os.replace(tmp, out)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices("lmtransfer:tokenizer")
    return tokenization.load_tokenizer(out)


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

    def __init__(self, config, tokenizer):
        self.config, self.data, self.tokenizer = config, config.data, tokenizer
        if config.data.max_examples.train or config.data.max_examples.dev:
            raise ValueError("config.data.max_examples is not used by pretraining: choose the "
                             "documents with train_files / eval_files and the length with "
                             "config.train.steps")
        self.objective = config.task
        self.head = OBJECTIVES[self.objective]
        tok = tokenizer
        if self.objective == "mlm":
            if tok.mask_token_id is None or tok.cls_token_id is None or tok.sep_token_id is None:
                raise ValueError("masked LM needs a tokenizer with [MASK], [CLS] and [SEP] "
                                 "(config.model.tokenizer=wordpiece or a BERT tokenizer dir)")
            self.prefix, self.suffix = [tok.cls_token_id], [tok.sep_token_id]
        else:
            end = tok.eos_token_id if tok.eos_token_id is not None else tok.sep_token_id
            if end is None:
                raise ValueError("causal LM needs an end-of-text (eos) or [SEP] token in the "
                                 "tokenizer to end each document")
            self.prefix, self.suffix = [], [end]
        self.special_ids = sorted(set(tok.all_special_ids))
        self.whole_word = self.objective == "mlm" and bool(self.data.whole_word)
        self.pairs = self.data.sentence_pairs if self.objective == "mlm" else ""
        if self.data.sentence_pairs and not self.pairs:
            raise ValueError("config.data.sentence_pairs needs objective=mlm")
        if self.pairs and self.whole_word:
            raise ValueError("config.data.whole_word with sentence_pairs is not supported; "
                             "turn one of them off")
        if self.pairs:
            self.head = "pretraining"

    def eval_splits(self):
        return ("dev",)

    def test_splits(self):
        return ()

    def load(self, split: str) -> Split:
        docs = load_corpus(self.data, split)
        if split == "train":
            num_shards = self.data.shards
            mesh = sharding.make_mesh(self.config.mesh.to_dict())
            owned = batching.owned_shards(mesh, self.config.train.batch_size, num_shards)
        else:
            num_shards, owned = 1, [0]
        parts, shard_rows, examples, at = [], {}, [], 0
        shards = corpus.shard_documents(len(docs), owned, num_shards)
        skipped = 0
        for g, doc_idx in shards.items():
            packed = self._pack(docs, doc_idx, np.random.default_rng(
                [self.config.seed, g, split == "train"]))
            skipped += packed.pop("skipped", 0)
            examples += [{"shard": g, "docs": [int(d) for d in row if d >= 0]}
                         for row in packed.pop("doc")]
            shard_rows[g] = (at, at + len(packed["length"]))
            at += len(packed["length"])
            parts.append(packed)
        features = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        features["attention_mask"] = (features["segment_ids"] > 0).astype(np.int32)
        features.setdefault("token_type_ids", np.zeros_like(features["input_ids"]))
        if skipped:
            log.warning("%s: %d one-token spans could not be split into a sentence pair and "
                        "are not used (config.data.sentence_pairs)", split, skipped)
        total = at
        if jax.process_count() > 1 and split == "train":
            from jax.experimental import multihost_utils
            total = int(multihost_utils.process_allgather(np.array(at)).sum())
        log.info("%s: %d documents of %s -> %d rows of %d tokens (%.1f%% filled)%s", split,
                 sum(len(d) for d in shards.values()), docs.name, at, self.data.max_length,
                 100 * features["length"].sum() / max(features["length"].size, 1)
                 / self.data.max_length,
                 f", shards {owned} of {num_shards}" if split == "train" else "")
        if self.objective == "mlm" and split != "train":
            features.update(self._fixed_masks(features))
        out = Split(split, features, examples, labelled=True)
        if split == "train":
            out.shard_rows, out.num_shards, out.total_rows = shard_rows, num_shards, total
        return out

    def _pack(self, docs, doc_idx, rng):
        tokens, starts = [], []
        for a in range(0, len(doc_idx), 1000):
            chunk = doc_idx[a:a + 1000]
            ids, st = corpus.tokenize(self.tokenizer, docs.get(chunk), self.whole_word)
            tokens += ids
            starts += st or []
        if self.pairs:
            return corpus.sentence_pairs(tokens, self.data.max_length, cls=self.prefix[0],
                                         sep=self.suffix[0], mode=self.pairs, rng=rng,
                                         doc_ids=list(doc_idx))
        return corpus.pack(tokens, self.data.max_length, prefix=self.prefix, suffix=self.suffix,
                           doc_ids=list(doc_idx), start_lists=starts if self.whole_word else None)

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
