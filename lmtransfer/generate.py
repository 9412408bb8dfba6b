"""Text generation from a causal LM (ours or a loaded HF decoder) with a KV cache.

    tokens = generate(model, params, [[5, 6, 7], [8]], max_new_tokens=20)           # greedy
    tokens = generate(model, params, prompts, 20, temperature=0.8, top_p=0.9, seed=1)

Prompts are left-padded into one batch, so every row's next token comes from the same slot;
positions count real tokens only, so a row's result does not depend on its neighbours. The
prompt is run once (prefill) and each new token costs one step over the cache, all inside
one jitted `lax.while_loop` that stops when every row has produced `eos_token_id`.

`--config.mode=generate` (configs/generate.py) runs it over prompts from the command line
or a file and writes `<workdir>/generations.jsonl`.
"""

from __future__ import annotations

import functools
import json
import logging
import os

import jax
import jax.numpy as jnp
import numpy as np

from lmtransfer import paths
from lmtransfer.models.gpt import init_cache

log = logging.getLogger(__name__)


def sample(logits, rng, temperature: float, top_k: int, top_p: float):
    """Next tokens [B] from logits [B, V]: argmax at temperature 0, else a draw from the
    tempered distribution restricted to the top k tokens and the top-p nucleus."""
    if temperature == 0:
        return jnp.argmax(logits, -1)
    logits = logits / temperature
    if top_k:
        kth = jax.lax.top_k(logits, top_k)[0][:, -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    if top_p < 1.0:
        order = jnp.argsort(-logits, axis=-1)
        sorted_logits = jnp.take_along_axis(logits, order, -1)
        probs = jax.nn.softmax(sorted_logits, -1)
        # Keep the smallest prefix whose mass reaches top_p (the first token always stays).
        keep_sorted = jnp.cumsum(probs, -1) - probs < top_p
        keep = jnp.zeros_like(keep_sorted).at[jnp.arange(logits.shape[0])[:, None],
                                             order].set(keep_sorted)
        logits = jnp.where(keep, logits, -jnp.inf)
    return jax.random.categorical(rng, logits, -1)


def check_prompts(model, prompts, max_new_tokens: int, where=None):
    """Refuses an empty prompt or one that with `max_new_tokens` passes the model's learned
    positions; `where[i]` names prompt i (file:line) in the error."""
    limit = model.config.max_position_embeddings
    learned = model.config.positions == "learned"
    for i, p in enumerate(prompts):
        name = where[i] if where else f"prompt {i}"
        if not len(p):
            raise ValueError(f"{name}: the prompt is empty (no tokens)")
        if learned and len(p) + max_new_tokens > limit:
            raise ValueError(
                f"{name}: {len(p)} prompt tokens + max_new_tokens={max_new_tokens} pass the "
                f"model's {limit} positions; shorten the prompt or lower "
                "config.generate.max_new_tokens")


@functools.partial(jax.jit, static_argnums=(0, 4, 5, 6, 7, 8))
def _generate(model, params, ids, mask, max_new: int, temperature: float, top_k: int,
              top_p: float, eos: int, rng):
    batch, prompt_len = ids.shape
    total = prompt_len + max_new
    cache = init_cache(model.config, batch, total, jnp.dtype(model.config.dtype))
    valid = jnp.zeros((batch, total), jnp.int32).at[:, :prompt_len].set(mask)
    positions = jnp.maximum(jnp.cumsum(mask, -1) - 1, 0)
    out = model.apply({"params": params}, ids, valid, position_ids=positions, cache=cache,
                      cache_index=0)
    lengths = mask.sum(-1)

    def body(carry):
        step, cache, logits, tokens, done, valid = carry
        token = sample(logits, jax.random.fold_in(rng, step), temperature, top_k, top_p)
        token = jnp.where(done, eos if eos >= 0 else 0, token)
        tokens = tokens.at[:, step].set(token)
        done = done | (token == eos)
        valid = valid.at[:, prompt_len + step].set(1)
        o = model.apply({"params": params}, token[:, None], valid,
                        position_ids=(lengths + step)[:, None], cache=cache,
                        cache_index=prompt_len + step)
        return step + 1, o.cache, o.logits[:, -1], tokens, done, valid

    def cond(carry):
        step, *_, done, _ = carry
        return (step < max_new) & ~jnp.all(done)

    tokens = jnp.full((batch, max_new), -1, jnp.int32)
    init = (0, out.cache, out.logits[:, -1], tokens, jnp.zeros(batch, bool), valid)
    return jax.lax.while_loop(cond, body, init)[3]


def generate(model, params, prompts, max_new_tokens: int, *, temperature: float = 0.0,
             top_k: int = 0, top_p: float = 1.0, eos_token_id: int | None = None, seed: int = 0,
             pad_to: int = 8, where=None) -> list[list[int]]:
    """New tokens for each prompt (a list of token ids), up to and including `eos_token_id`.

    Prompt batches are padded to a multiple of `pad_to` tokens so prompts of similar length
    share one compiled program. The model must have the `lm` head."""
    if model.head != "lm":
        raise ValueError(f"generation needs a language-model head; this model has "
                         f"head={model.head!r}")
    check_prompts(model, prompts, max_new_tokens, where)
    # Positions count real tokens only, so the padded width never limits learned positions.
    width = -(-max(len(p) for p in prompts) // pad_to) * pad_to
    ids = np.zeros((len(prompts), width), np.int32)
    mask = np.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):], mask[i, width - len(p):] = p, 1
    eos = -1 if eos_token_id is None else int(eos_token_id)
    tokens = np.asarray(_generate(model, params, jnp.asarray(ids), jnp.asarray(mask),
                                  max_new_tokens, float(temperature), int(top_k), float(top_p),
                                  eos, jax.random.key(seed)))
    out = []
    for row in tokens:
        row = [int(t) for t in row if t >= 0]
        if eos in row:
            row = row[:row.index(eos) + 1]
        out.append(row)
    return out


def read_prompts(config) -> tuple[list[str], list[str]]:
    """(prompts, where) from config.generate.prompts and config.generate.prompts_file (one
    prompt per line, or JSONL with a `prompt` field)."""
    g = config.generate
    prompts, where = list(g.prompts), [f"config.generate.prompts[{i}]"
                                       for i in range(len(g.prompts))]
    if g.prompts_file:
        with paths.open(g.prompts_file) as f:
            for n, line in enumerate(f, 1):
                line = line.rstrip("\n")
                if not line.strip():
                    continue
                if g.prompts_file.endswith(".jsonl"):
                    try:
                        line = json.loads(line)["prompt"]
                    except (json.JSONDecodeError, KeyError, TypeError):
                        raise ValueError(f"{g.prompts_file}:{n}: expected a JSON object with a "
                                         "'prompt' field") from None
                prompts.append(line)
                where.append(f"{g.prompts_file}:{n}")
    if not prompts:
        raise ValueError("no prompts: set config.generate.prompts or config.generate.prompts_file")
    return prompts, where


def run(config, workdir: str) -> dict:
    """The `generate` mode: the model of config.init_from, prompts in, generations.jsonl out."""
    from types import SimpleNamespace

    from lmtransfer import sharding, tokenization
    from lmtransfer.train import init

    g = config.generate
    tokenizer = init.load_tokenizer(config)
    mesh = sharding.make_mesh(config.mesh.to_dict())
    rules = sharding.rules_from_config(config.sharding_rules)
    model, params = init.build(config, SimpleNamespace(head="lm", num_labels=0), tokenizer,
                               mesh, rules)
    prompts, where = read_prompts(config)
    # The tokenizer's leading special tokens (Llama's <s>), never trailing ones.
    prefix, _ = tokenization.special_tokens(tokenizer)
    ids = [prefix + tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    eos = tokenizer.eos_token_id if g.stop_at_eos else None
    out_path = os.path.join(workdir, "generations.jsonl")
    rows = []
    with sharding.use_mesh(mesh, rules):
        for start in range(0, len(ids), g.batch_size):
            chunk = slice(start, start + g.batch_size)
            new = generate(model, params, ids[chunk], g.max_new_tokens,
                           temperature=g.temperature, top_k=g.top_k, top_p=g.top_p,
                           eos_token_id=eos, seed=config.seed + start, where=where[chunk])
            for prompt, w, tokens in zip(prompts[chunk], where[chunk], new, strict=True):
                text = tokenizer.decode(tokens, skip_special_tokens=True)
                rows.append(dict(where=w, prompt=prompt, completion=text, tokens=tokens))
                log.info("%s: %r -> %r", w, prompt, text)
    if jax.process_index() == 0:
        paths.write_text(out_path, "".join(json.dumps(r) + "\n" for r in rows))
    return {"generations": out_path, "prompts": len(rows),
            "new_tokens": sum(len(r["tokens"]) for r in rows)}
