"""The benchmark's analytic FLOPs and its table (run on the tiny shapes)."""

import collections

import jax
import jax.numpy as jnp
import pytest

from lmtransfer import bench, perf
from lmtransfer.models import from_preset


def test_train_flops_bert_base_and_gpt2():
    model = from_preset("bert-base", "classification", 2)
    # 6 * N_matmul * tokens dominates: 12 layers x 7.08M weights + pooler 0.59M = 85.5M.
    flops = bench.train_flops(model, batch=1, length=128)
    assert abs(flops / (6 * 85.5e6 * 128) - 1) < 0.05
    # GPT-2 small: 85M in the blocks + the 38.6M tied output projection = 123.5M matmul
    # weights; attention adds 12 * 12 * 1024 * 768 per token at length 1024.
    gpt2 = from_preset("gpt2", "lm")
    assert perf.matmul_weights(gpt2) == 12 * (4 * 768 ** 2 + 2 * 768 * 3072) + 768 * 50257
    assert perf.train_flops_per_token(gpt2, 1024) == pytest.approx(
        6 * 123.56e6 + 12 * 12 * 1024 * 768, rel=1e-3)


def test_lora_flops_count_frozen_weights_without_their_gradient():
    """bert-base, LoRA rank 8 on query/value: the frozen kernels cost 4 FLOPs per weight
    (forward + input gradient), the adapters and the classifier 6; attention is unchanged."""
    from lmtransfer import peft
    from lmtransfer.models import lora

    full = from_preset("bert-base", "classification", 2)
    adapted = peft.attach(full, lora.LoraSpec(rank=8))
    adapters = 12 * 2 * (768 * 8 + 8 * 768)
    classifier = 768 * 2
    kernels = perf.matmul_weights(full)
    assert perf.matmul_weights(adapted) == kernels + adapters
    assert perf.matmul_weights(adapted, frozen=True) == kernels - classifier
    assert perf.matmul_weights(full, frozen=True) == 0
    attention = perf.train_flops_per_token(full, 128) - 6 * kernels
    assert perf.train_flops_per_token(adapted, 128) == pytest.approx(
        4 * (kernels - classifier) + 6 * (adapters + classifier) + attention)


def test_bench_runs_and_prints_both_frameworks_with_lora_rows(minilm_path, tmp_path, capsys):
    """Both frameworks, and with --peft lora the lmtransfer and peft LoRA rows beside full
    fine-tuning: the optimizer state holds the same trained set in both frameworks, and far
    less than full fine-tuning's, as do the checkpoint and the step's buffers."""
    import json

    out = tmp_path / "bench.json"
    bench.main(["--model", minilm_path, "--batch", "2", "--lengths", "8", "--steps", "1",
                "--peft", "lora", "--json", str(out)])
    printed = capsys.readouterr().out
    assert "| 8 | 2 | lmtransfer (JAX) |" in printed
    assert "| 8 | 2 | transformers (PyTorch) |" in printed
    assert "| ratio JAX / PyTorch (LoRA r8) |" in printed
    rows = {r["framework"]: r for r in json.loads(out.read_text())["rows"]}
    lora, full = rows["lmtransfer LoRA r8 (JAX)"], rows["lmtransfer (JAX)"]
    for ours, peer in ((lora, "transformers+peft LoRA r8 (PyTorch)"),
                       (full, "transformers (PyTorch)")):
        assert rows[peer]["opt_bytes"] == pytest.approx(ours["opt_bytes"], rel=0.01)
    assert lora["opt_bytes"] * 100 < full["opt_bytes"]
    assert lora["ckpt_bytes"] * 100 < full["ckpt_bytes"]
    assert 0 < lora["xla_bytes"] < full["xla_bytes"]


def test_gpu_script_on_tiny_shapes(tmp_path):
    """benchmarks/gpu.sh end to end (SIZE=tiny: the same runs on the tiny preset, on CPU):
    parity first, then every table, with the peer beside lmtransfer in each."""
    import json
    import os
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "SIZE": "tiny", "PYTHON": sys.executable}
    subprocess.run(["bash", os.path.join(root, "benchmarks", "gpu.sh"), str(tmp_path)],
                   env=env, check=True, capture_output=True, text=True)
    table = (tmp_path / "gpu.md").read_text()
    assert "parity: max |logit difference|" in table
    for run, lengths in (("mlm-base", [16, 32]), ("mlm-large", [16, 32]), ("glue-base", [16])):
        figures = json.loads((tmp_path / f"{run}.json").read_text())
        assert figures["dtype"] == "bfloat16" and figures["peer_tokens_per_s"] > 0, run
        assert figures["ratio"] == pytest.approx(
            figures["lmtransfer_tokens_per_s"] / figures["peer_tokens_per_s"])
        assert 0 < figures["mfu"] < 1.5
        assert [r["length"] for r in figures["rows"]] == [x for x in lengths for _ in "ab"]
        assert f"## {run}:" in table


def test_llama_matmul_weights_equal_its_kernels():
    """Grouped-query attention and SwiGLU: the FLOP count's weights are the model's kernels."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from lmtransfer.sharding import unbox

    model = from_preset("llama-tiny", "lm")
    params = unbox(jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 2), jnp.int32)))
    kernels = [np.prod(x.shape) for path, x in jax.tree_util.tree_flatten_with_path(
        params["params"])[0] if path[-1].key == "kernel"]
    assert perf.matmul_weights(model) == sum(kernels)


@pytest.mark.parametrize("family,head", [("roberta", "mlm"), ("deberta-v2", "classification"),
                                         ("modernbert", "mlm")])
def test_bench_takes_any_family_dir(family, head, tmp_path, capsys):
    """--model <HF dir> of another family: the peer is that family's transformers class, and
    the two frameworks agree on the logits before anything is timed."""
    from tests import encoder_models as em

    em.make_torch(family, head, num_labels=2).save_pretrained(tmp_path)
    bench.main(["--model", str(tmp_path), "--head", head, "--batch", "2", "--lengths", "8",
                "--steps", "1", "--parity", "1e-4"])
    out = capsys.readouterr().out
    assert "| 8 | 2 | lmtransfer (JAX) |" in out and "| 8 | 2 | transformers (PyTorch) |" in out


_WIDE = dict(hidden_size=128, intermediate_size=512, num_attention_heads=4, vocab_size=512,
             max_position_embeddings=128)
_WIDE_KW = {"distilbert": dict(dim=128, hidden_dim=512, n_heads=4, vocab_size=512,
                               max_position_embeddings=128),
            "electra": dict(_WIDE, embedding_size=64),
            "albert": dict(_WIDE, embedding_size=64, num_hidden_groups=2, inner_group_num=2)}


@pytest.mark.parametrize("family", ["roberta", "distilbert", "electra", "albert", "deberta-v2",
                                    "modernbert"])
def test_analytic_flops_of_every_family_match_xla(family):
    """The analytic forward FLOPs (kernels, the tied decoder, ALBERT's shared layers per
    use, DeBERTa's relative scores, ModernBERT's GeGLU) are 85-105% of what XLA counts in
    the compiled forward (XLA adds the elementwise work: norms, softmax, activations)."""
    import jax
    import jax.numpy as jnp

    from lmtransfer import hf
    from tests import encoder_models as em

    cfg = em.hf_config(family, **_WIDE_KW.get(family, _WIDE)).to_dict()
    fam = hf.family_for_config(cfg)
    model = fam.make_model(fam.config_from_hf(cfg), "mlm", 2)
    ids = jnp.ones((2, 64), jnp.int32)
    params = jax.eval_shape(model.init, jax.random.key(0), ids)
    cost = jax.jit(lambda p, x: model.apply(p, x).logits).lower(params, ids).compile()
    cost = cost.cost_analysis()
    xla = (cost[0] if isinstance(cost, list) else cost)["flops"]
    ours = perf.train_flops_per_token(model, 64) / 3 * ids.size
    assert 0.85 < ours / xla < 1.05, ours / xla


def test_step_xla_counts_every_dot_by_operand_layout():
    """benchmarks/step_xla.py's dot table: every dot of a compiled program once, with its
    FLOPs; which library XLA gives each is jaxlib's choice, so only the counts are checked."""
    from benchmarks.step_xla import dot_table

    def f(x, w, g, q):
        return x @ w, x.T @ g, jnp.einsum("bqh,bkh->bqk", q, q)

    x, w, g, q = (jnp.ones(s) for s in ((64, 32), (32, 48), (64, 16), (4, 8, 16)))
    rows = dot_table(jax.jit(f).lower(x, w, g, q).compile().as_text())
    by_layout = collections.Counter()
    for r in rows:
        by_layout[r["layout"]] += r["dots"]
    assert sum(by_layout.values()) == 3 and by_layout["batched"] == 1
    want = 2 * (64 * 32 * 48 + 32 * 64 * 16 + 4 * 8 * 8 * 16) / 1e9
    assert sum(r["gflop"] for r in rows) == pytest.approx(want, rel=1e-9)
    assert sum(r["share"] for r in rows) == pytest.approx(1)


def test_padding_script_prints_each_run_fixed_and_planned(tmp_path, capsys):
    """benchmarks/padding.py on a tiny table: one row per run and seed, with both bucket sets
    and their padding against each batch's longest row."""
    import os
    import re

    from benchmarks import padding
    from tests.glue_data import make_glue

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    root = make_glue(str(tmp_path / "glue"), n_train=64)
    table = tmp_path / "t.py"
    table.write_text(f'''
def get_table(arg=None):
    return dict(name="tiny", seeds=[0, 1], tasks=[dict(
        name="MRPC", config="{repo}/configs/glue.py:task=mrpc,model=tiny",
        overrides={{"data.dir": "{root}", "data.max_length": 64}}, grid={{"optim.lr": [1e-3]}})])
''')
    padding.main(["--table", str(table)])
    rows = [r for r in capsys.readouterr().out.splitlines() if r.startswith("| MRPC")]
    assert [r.split("|")[1].strip() for r in rows] == ["MRPC seed 0", "MRPC seed 1"]
    for r in rows:
        fixed, planned = re.findall(r"\+(\d+\.\d)%", r)
        assert float(fixed) >= 0 and float(planned) >= 0
        assert r.split("|")[3].split("/")[0].strip().startswith("[")


def test_step_xla_profile_times_each_op_with_its_dots():
    """benchmarks/step_xla.py's op profile: a traced program's ops come back with their time
    and the FLOPs of the dots they hold, the dots' FLOPs summing to the program's."""
    from benchmarks.step_xla import op_profile

    f = jax.jit(lambda x, w: jnp.tanh(x @ w) @ w.T)
    x, w = jnp.ones((256, 128)), jnp.ones((128, 192))
    rows = op_profile(f.lower(x, w).compile().as_text(),
                      lambda: jax.block_until_ready(f(x, w)), steps=2)
    assert rows and all(r["ms"] >= 0 and r["ops"] >= 1 for r in rows)
    want = 2 * 2 * 256 * 128 * 192 / 1e9
    assert sum(r["gflop"] for r in rows) == pytest.approx(want, rel=1e-9)
    assert all(r["gflops"] > 0 for r in rows if r["gflop"])
