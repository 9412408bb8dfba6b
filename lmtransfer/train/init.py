"""Where a run's weights and tokenizer come from (`config.init_from`, `config.model.*`).

  init_from = HF checkpoint dir    pretrained encoder, the task's head fresh (or loaded); a
              or hub id            hub id (`org/name[@rev]`) is fetched to the HF cache first
  init_from = lmtransfer workdir   our own checkpoint (best, else latest); head fresh if the
                                   task's head or label count differs
  init_from = ""                   random init from `config.model.preset` (from scratch)

(Resuming an interrupted run is separate: the loop restores the workdir's own checkpoint.)
"""

from __future__ import annotations

import logging
import os

import jax
import numpy as np
from flax import traverse_util

from lmtransfer import checkpoints, hf, models, paths, peft, sharding, tokenization
from lmtransfer.errors import ConfigError, NotFound
from lmtransfer.hf import hub

log = logging.getLogger(__name__)


def _is_hf_dir(path: str) -> bool:
    return paths.exists(os.path.join(path, "config.json")) and not checkpoints.is_checkpoint(path)


def check_source(src: str, key: str = "config.init_from") -> None:
    """A model source must be an HF checkpoint dir or an lmtransfer workdir / checkpoint."""
    if not (_is_hf_dir(src) or checkpoints.is_checkpoint(src)):
        raise NotFound(f"{key}={src}: neither an HF checkpoint directory (config.json and "
                       "weights) nor an lmtransfer workdir or checkpoint (checkpoints/<step>/); "
                       "give one of those or a hub id (org/name), or set it to '' and "
                       "config.model.preset to train from scratch")


def tokenizer_dir(config) -> str:
    if config.model.tokenizer in tokenization.TOKENIZER_KINDS:
        raise ConfigError(f"config.model.tokenizer={config.model.tokenizer!r} trains a tokenizer "
                          "on the corpus: only pretraining tasks (clm, mlm) do that")
    if config.model.tokenizer:
        return hub.resolve(config.model.tokenizer, "config.model.tokenizer", weights=False)
    src = hub.resolve(config.init_from, "config.init_from")  # a hub id -> its snapshot dir
    if src:
        check_source(src)
    if src and _is_hf_dir(src):
        return src
    if src and paths.isdir(os.path.join(src, "tokenizer")):
        return os.path.join(src, "tokenizer")
    return hf.packaged_minilm()


def load_tokenizer(config, workdir: str | None = None):
    """The run's tokenizer; `config.model.tokenizer` = wordpiece | bpe trains one on the
    pretraining corpus into `<workdir>/tokenizer` (kept for resume and fine-tuning)."""
    if config.model.tokenizer in tokenization.TOKENIZER_KINDS and workdir:
        from lmtransfer.tasks.pretrain import corpus_tokenizer

        return corpus_tokenizer(config, workdir)
    return tokenization.set_padding(tokenization.load_tokenizer(tokenizer_dir(config)),
                                    config.model.get("pad_token", ""))


def keep_tokenizer(tokenizer, workdir: str) -> None:
    """Saves the run's tokenizer as `<workdir>/tokenizer` (once, written whole), so
    `init_from=<workdir>` later tokenizes as this run did wherever its source now is."""
    out = os.path.join(workdir, "tokenizer")
    if jax.process_index() == 0 and not paths.isdir(out):
        with hf.atomic_dir(out) as tmp:
            tokenizer.save_pretrained(tmp)


def config_overrides(config) -> dict:
    m = config.model
    out = dict(dtype=m.dtype, param_dtype=m.param_dtype, attention=m.attention, remat=m.remat)
    for k in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
        if m[k] >= 0:
            out[k] = m[k]
    return out


def check_fits(config, model, tokenizer) -> None:
    """Inputs the model can't represent would silently read garbage: ids past its vocabulary
    (a gather clamps them) or positions past its position table."""
    vocab = model.config.vocab_size
    if len(tokenizer) > vocab:
        raise ValueError(
            f"the tokenizer ({tokenizer.name_or_path}) has {len(tokenizer)} tokens but the "
            f"model (config.init_from={config.init_from or config.model.preset}) has a "
            f"vocabulary of {vocab}: they don't belong together. Set config.model.tokenizer to "
            "the tokenizer the model was trained with")
    # RoBERTa's table reserves its first pad_token_id + 1 rows.
    limit = getattr(model.config, "max_positions", model.config.max_position_embeddings)
    learned = getattr(model.config, "positions", "learned") == "learned"
    if learned and config.data.max_length > limit:
        raise ConfigError(f"config.data.max_length={config.data.max_length} exceeds the model's "
                          f"max_position_embeddings={limit}; lower config.data.max_length")


def build(config, task, tokenizer, mesh, rules):
    """Returns (model, params placed in their shardings). A decoder's config takes the
    tokenizer's pad/bos/eos ids (an HF export then pools and generates as we do)."""
    model, params = _build(config, task, tokenizer, mesh, rules)
    if model.arch == "gpt":
        ids = {k: getattr(tokenizer, k) for k in ("pad_token_id", "bos_token_id",
                                                   "eos_token_id")}
        model = model.clone(config=model.config.replace(**ids))
    return model, params


def build_adapted(config, task, tokenizer, mesh, rules):
    """`build`, then LoRA adapters when config.peft asks: (model, params, base reference or
    None). The reference is what a LoRA checkpoint keeps of its base."""
    model, params = build(config, task, tokenizer, mesh, rules)
    spec = peft.spec_from_config(config.peft)
    if spec is None:
        return model, params, None
    if not config.init_from:
        raise ConfigError("config.peft.method=lora needs a pretrained base: set "
                          "config.init_from (an HF dir, hub id or lmtransfer workdir)")
    model, params = peft.add_adapters(model, params, spec, config.seed, mesh, rules)
    src = hub.resolve(config.init_from, "config.init_from")
    return model, params, peft.base_reference(config.init_from, src, config.seed,
                                              config.peft.base_dtype)


def load_source(src: str, head, num_labels: int, seed: int, mesh, rules, overrides,
                key: str = "config.init_from"):
    """(model, params) for `head` from an HF dir or an lmtransfer workdir (its weights; the
    head fresh from `seed` where the source lacks it). A LoRA workdir comes merged."""
    check_source(src, key)
    if _is_hf_dir(src):
        return hf.load_pretrained(src, head=head, num_labels=num_labels, seed=seed, mesh=mesh,
                                  rules=rules, **overrides)
    source_model, source_params, _ = checkpoints.load_model(src, **overrides)
    source_model, source_params = peft.merged(source_model, source_params)
    if head not in models.heads_of(source_model.arch):
        raise ValueError(
            f"{key}={src} holds a {source_model.arch.upper()} model, which has no {head!r} "
            f"head (it has {models.heads_of(source_model.arch)}); it needs a "
            f"{'GPT' if head == 'lm' else 'BERT or GPT'} checkpoint")
    model = type(source_model)(source_model.config, head=head, num_labels=num_labels)
    return model, transfer(source_params, model, seed, mesh, rules, src)


def _build(config, task, tokenizer, mesh, rules):
    src, overrides = hub.resolve(config.init_from, "config.init_from"), config_overrides(config)
    if src:
        return load_source(src, task.head, task.num_labels, config.seed, mesh, rules, overrides)
    if config.model.preset:
        multiple = max(config.model.vocab_multiple, 1)
        vocab = -(-len(tokenizer) // multiple) * multiple
        if config.model.get("positions"):  # GPT configs only
            overrides["positions"] = config.model.positions
        model = models.from_preset(config.model.preset, task.head, task.num_labels,
                                   vocab_size=vocab, **overrides)
        variables, _ = sharding.init_sharded(model.init, mesh, rules, jax.random.key(config.seed),
                                             np.zeros((1, 2), np.int32))
        log.info("model: %s from scratch (random init, seed %d)", config.model.preset,
                 config.seed)
        return model, variables["params"]
    raise ValueError("set config.init_from (HF dir or lmtransfer workdir) or config.model.preset")


def transfer(source_params, model, seed, mesh, rules, source: str):
    """Copies every parameter whose path and shape match; initialises the rest fresh."""
    fresh = sharding.unbox(jax.jit(model.init)(jax.random.key(seed), np.zeros((1, 2), np.int32)))
    fresh = traverse_util.flatten_dict(jax.device_get(fresh["params"]), sep="/")
    src = traverse_util.flatten_dict(jax.device_get(source_params), sep="/")
    params, new = {}, []
    for path, x in fresh.items():
        if path in src and np.shape(src[path]) == np.shape(x):
            params[path] = np.asarray(src[path])
        else:
            params[path], _ = np.asarray(x), new.append(path)
    dropped = sorted(set(src) - set(params))
    if new:
        log.info("%s: initialised fresh: %s", source, ", ".join(new))
    if dropped:
        log.info("%s: not used by head=%r: %s", source, model.head, ", ".join(dropped))
    abstract = jax.eval_shape(model.init, jax.random.key(0), np.zeros((1, 2), np.int32))
    shardings = sharding.param_shardings(abstract, mesh, rules)["params"]
    return sharding.put_sharded(traverse_util.unflatten_dict(params, sep="/"), shardings)
