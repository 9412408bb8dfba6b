"""`convert` mode: HF checkpoint dir (BERT, GPT-2, Llama, Mistral, Qwen2) -> lmtransfer
checkpoint in the workdir -> HF dir again.

The HF export is written from the *restored* lmtransfer checkpoint, so every conversion also
proves the round trip. A source that is an lmtransfer workdir/checkpoint is exported to HF.
"""

from __future__ import annotations

import logging
import os

import jax

from lmtransfer import checkpoints, hf, paths, sharding, tokenization
from lmtransfer.hf import hub

log = logging.getLogger(__name__)


def _tokenizer_or_none(path: str):
    try:
        return tokenization.load_tokenizer(path)
    except (OSError, ValueError) as e:
        log.warning("%s: no usable tokenizer (%s); exporting weights and config only", path, e)
        return None


def run(config, workdir: str) -> dict:
    c = config.convert
    source = paths.resolve(hub.resolve(c.source, "config.convert.source")
                           or hf.packaged_minilm())
    mesh = sharding.make_mesh(config.mesh.to_dict())
    rules = sharding.rules_from_config(config.sharding_rules)
    overrides = config.model.to_dict()
    tok_dir = os.path.join(workdir, "tokenizer")
    is_hf = paths.exists(os.path.join(source, "config.json"))
    if not is_hf and checkpoints.is_checkpoint(source):
        log.info("source %s is an lmtransfer checkpoint: exporting it to HF format", source)
        tok_src = os.path.join(source, "tokenizer")
    else:
        if checkpoints.is_checkpoint(workdir):
            raise FileExistsError(f"{workdir} already holds an lmtransfer checkpoint; convert "
                                  "into a new --workdir")
        model, params = hf.load_pretrained(source, head=c.head or None,
                                           num_labels=c.num_labels or None, seed=config.seed,
                                           mesh=mesh, rules=rules, **overrides)
        id2label = hf.read_config(source).get("id2label")
        checkpoints.save_model(workdir, 0, model, params, id2label=id2label)
        n = sum(x.size for x in jax.tree.leaves(params))
        log.info("wrote lmtransfer checkpoint %s (%d parameters, head=%r)",
                 os.path.join(workdir, checkpoints.CHECKPOINT_DIR), n, model.head)
        tok = _tokenizer_or_none(source)
        if tok is not None and jax.process_index() == 0:
            with hf.atomic_dir(tok_dir, last=("tokenizer.json",)) as tmp:
                tok.save_pretrained(tmp)
        source, tok_src = workdir, tok_dir
    result = {"checkpoint": os.path.join(source, checkpoints.CHECKPOINT_DIR)}
    if c.export:
        model, params, meta = checkpoints.load_model(source, mesh=mesh, rules=rules, **overrides)
        tok = _tokenizer_or_none(tok_src) if paths.isdir(tok_src) else None
        id2label = {int(k): v for k, v in meta["id2label"].items()} or None
        out = hf.save_pretrained(model, params, os.path.join(workdir, "hf"), tokenizer=tok,
                                 id2label=id2label)
        log.info("wrote HF checkpoint %s (%s)", out, hf.architecture(model))
        result["hf"] = out
    return result
