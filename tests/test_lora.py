"""LoRA (`config.peft.method=lora`): step 0 is the base model, only adapters and the head
train and hold optimizer state, sharded == single device, gradient accumulation, exports
(merged HF weights and a PEFT adapter dir) against transformers + peft, checkpoints without
the base, exact resume after kill -9, and the errors of bad settings."""

import os
import signal
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import traverse_util

from lmtransfer import checkpoints, faults, peft, tokenization
from lmtransfer.train import loop
from tests.glue_data import WORDS, make_glue
from tests.test_faults import train_losses
from tests.test_train_step import config_for, max_diff, run_steps

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def glue_root(tmp_path_factory):
    return make_glue(str(tmp_path_factory.mktemp("glue")), n_train=64)


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    """A tiny random HF BERT (base model: the classifier starts fresh) with its tokenizer."""
    import torch
    import transformers

    out = str(tmp_path_factory.mktemp("base"))
    tokenization.train_tokenizer("wordpiece", [" ".join(WORDS)] * 4, 80, out)
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2,
                                  num_attention_heads=4, intermediate_size=48,
                                  max_position_embeddings=72)
    transformers.BertModel(cfg).save_pretrained(out)
    return out


def lora_config(glue_root, base_dir, **peft_kw):
    c = config_for(glue_root, batch_size=16)
    c.init_from, c.data.max_length = base_dir, 64
    c.peft.method, c.peft.rank, c.peft.alpha = "lora", 4, 8.0
    c.peft.dropout = 0.0  # its masks differ between microbatch layouts, like other dropout
    c.optim.lr = 1e-2
    for k, v in peft_kw.items():
        c.peft[k] = v
    return c


def _flat(tree):
    return traverse_util.flatten_dict(jax.device_get(tree), sep="/")


def test_step0_is_the_base_and_only_adapters_and_head_train(glue_root, base_dir):
    from lmtransfer import hf

    config = lora_config(glue_root, base_dir)
    losses, trained, state = run_steps(config, {"data": 1})
    model, frozen = run_steps.last["model"], run_steps.last["frozen"]
    # What trains: A and B on query/value of both layers, and the fresh classifier.
    assert sorted(_flat(trained)) == sorted(
        [f"layer_{i}/attention/{m}/lora_{ab}" for i in (0, 1) for m in ("query", "value")
         for ab in "ab"] + ["classifier/bias", "classifier/kernel"])
    assert "layer_0/attention/query/kernel" in _flat(frozen)
    # The optimizer holds exactly two moments per trained tensor, nothing for the base.
    shapes = [x.shape for x in jax.tree.leaves(state.opt_state) if np.ndim(x)]
    assert sorted(shapes) == sorted([x.shape for x in jax.tree.leaves(trained)] * 2)
    assert losses[-1] < losses[0] and np.any(_flat(trained)["layer_0/attention/query/lora_b"])
    # Step 0 (B = 0) computes exactly what the base does.
    _, start, _ = run_steps(config, {"data": 1}, n_steps=0)
    base_model, base_params = hf.load_pretrained(base_dir, head="classification",
                                                 num_labels=2, seed=config.seed)
    batch = run_steps.last["batcher"].train_batch(0, 0)
    ids, mask = np.asarray(batch["input_ids"]), np.asarray(batch["attention_mask"])
    ours = model.apply({"params": peft.combine(start, frozen)}, ids, mask,
                       deterministic=True).logits
    want = base_model.apply({"params": base_params}, ids, mask, deterministic=True).logits
    np.testing.assert_array_equal(np.asarray(ours), np.asarray(want))
    # bf16 base: the frozen weights halve, adapters and head stay float32.
    config.peft.base_dtype = "bfloat16"
    bf_losses, bf_trained, _ = run_steps(config, {"data": 1})
    assert {x.dtype.name for x in jax.tree.leaves(run_steps.last["frozen"])} == {"bfloat16"}
    assert {x.dtype.name for x in jax.tree.leaves(bf_trained)} == {"float32"}
    np.testing.assert_allclose(bf_losses, losses, atol=2e-2)


def test_sharded_and_accumulated_equal_single_device(glue_root, base_dir):
    config = lora_config(glue_root, base_dir, targets=r"attention/|mlp/", train="layer_norm")
    single_losses, single, _ = run_steps(config, {"data": 1})
    losses, params, state = run_steps(config, {"data": 2, "fsdp": 2, "tensor": 2})
    np.testing.assert_allclose(losses, single_losses, atol=1e-5)
    assert max_diff(params, single) <= 1e-5
    a = state.params["layer_0"]["mlp"]["wi"]["lora_a"]  # adapters shard like their kernel
    assert a.sharding.spec == jax.sharding.PartitionSpec("fsdp", None)
    assert "scale" in state.params["layer_0"]["output_layer_norm"]  # peft.train
    config.train.grad_accum = 2
    acc_losses, acc, _ = run_steps(config, {"data": 1})
    np.testing.assert_allclose(acc_losses, single_losses, atol=1e-5)
    assert max_diff(acc, single) <= 1e-5


def _cli(glue_root, base_dir, workdir, *extra):
    return [sys.executable, "-m", "lmtransfer.main", "--config",
            "configs/glue.py:task=mrpc,model=tiny", f"--config.data.dir={glue_root}",
            f"--config.init_from={base_dir}", "--config.peft.method=lora",
            "--config.peft.rank=4", "--config.peft.dropout=0.1", "--config.optim.lr=1e-2",
            "--config.train.steps=12", "--config.train.batch_size=8",
            "--config.train.eval_batch_size=32", "--config.train.checkpoint_every=4",
            "--config.train.log_every=1", "--config.data.max_length=64", "--workdir",
            str(workdir), *extra]


def test_run_exports_checkpoints_and_resume(glue_root, base_dir, tmp_path):
    """One CLI run (with LoRA dropout) exports merged and PEFT formats, which transformers
    and peft load to our logits; its checkpoints hold only the trained part; a run killed
    mid-save resumes to the same losses and adapters."""
    import torch
    import transformers
    from peft import PeftModel

    env = {**os.environ, "XLA_FLAGS": "", "JAX_PLATFORMS": "cpu"}
    ref = tmp_path / "ref"
    r = subprocess.run(_cli(glue_root, base_dir, ref, "--config.train.export_hf=True",
                            "--config.train.export_peft=True"),
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    # Checkpoints: the trained part (adapters + classifier) and the base's reference.
    model, params, meta = checkpoints.load_model(str(ref))
    assert meta["base"]["sha256"] == peft.files_sha256(base_dir)
    stored = ocp.StandardCheckpointer().metadata(ref / "checkpoints" / "12" / "params")
    assert sorted(_flat(dict(stored.item_metadata))) == sorted(
        p for p in _flat(params) if p.endswith(peft.ADAPTERS) or p.startswith("classifier/"))
    # Our logits (the best checkpoint, adapters unmerged) on dev-like rows.
    tok = tokenization.load_tokenizer(base_dir)
    enc = tok(["the cat sat on the mat", "a dog ran far away from home"],
              ["the mat was red", "home is far"], padding=True, return_tensors="np")
    enc = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
           "token_type_ids": (enc["input_ids"] > 30).astype(np.int64)}  # any segments
    ours = np.asarray(model.apply({"params": params}, enc["input_ids"], enc["attention_mask"],
                                  enc["token_type_ids"], deterministic=True).logits)
    assert np.abs(ours).max() > 0
    t_in = {k: torch.tensor(v) for k, v in enc.items()}
    with torch.no_grad():
        merged = transformers.AutoModelForSequenceClassification.from_pretrained(ref / "hf")
        base = transformers.AutoModelForSequenceClassification.from_pretrained(base_dir,
                                                                               num_labels=2)
        adapted = PeftModel.from_pretrained(base, ref / "peft").eval()
        for torch_model in (merged.eval(), adapted):
            np.testing.assert_allclose(torch_model(**t_in).logits.numpy(), ours, atol=1e-4)
    # kill -9 while checkpoint 8 is being written, then resume: the same run.
    killed = tmp_path / "killed"
    r = subprocess.run(_cli(glue_root, base_dir, killed), cwd=REPO,
                       env={**env, faults.ENV: "save:8"}, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == -signal.SIGKILL, r.stderr[-3000:]
    r = subprocess.run(_cli(glue_root, base_dir, killed), cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0 and "resumed from step" in r.stderr, r.stderr[-3000:]
    got, want = train_losses(killed), train_losses(ref)
    assert sorted(got) == list(range(1, 13))
    for step in want:
        assert got[step] == pytest.approx(want[step], abs=1e-6), step
    _, a, _ = checkpoints.load_model(str(killed / "checkpoints" / "12"))
    _, b, _ = checkpoints.load_model(str(ref / "checkpoints" / "12"))
    assert max_diff(a, b) == 0


def test_changed_base_is_refused(glue_root, base_dir, tmp_path):
    import shutil

    config = lora_config(glue_root, base_dir)
    config.init_from = str(tmp_path / "base")
    shutil.copytree(base_dir, config.init_from)
    config.train.steps, config.train.checkpoint_every = 2, 2
    loop.train(config, str(tmp_path / "run"))
    with open(os.path.join(config.init_from, "model.safetensors"), "r+b") as f:
        f.seek(-4, 2)
        f.write(b"\0\0\0\1")
    with pytest.raises(ValueError, match=r"the base of this LoRA checkpoint, .* changed since "
                                         r"it was trained"):
        checkpoints.load_model(str(tmp_path / "run"))


@pytest.mark.parametrize("kw,match", [
    (dict(targets="^decoder/"), r"config\.peft\.targets='\^decoder/' matches none of the "
                                r"model's dense layers; they are layer_0/attention/query"),
    (dict(rank=40), r"config\.peft\.rank=40 is larger than the matrix "
                    r"layer_0/attention/query \(32 x 32\)"),
    (dict(train="^nothing"), r"config\.peft\.train='\^nothing' matches no parameter"),
    (dict(method="adapter"), r"config\.peft\.method='adapter'"),
])
def test_bad_settings_name_the_key(glue_root, base_dir, kw, match):
    with pytest.raises(ValueError, match=match):
        run_steps(lora_config(glue_root, base_dir, **kw), {"data": 1}, n_steps=0)


def test_peft_export_needs_adapters(glue_root, tmp_path):
    config = config_for(glue_root)
    config.train.export_peft = True
    with pytest.raises(ValueError, match=r"config\.train\.export_peft=True writes LoRA "
                                         r"adapters, but this run has none"):
        loop.train(config, str(tmp_path))
    from lmtransfer.models import from_preset

    with pytest.raises(ValueError, match="the model has no adapters"):
        peft.save_adapter(from_preset("tiny", "classification"), {}, str(tmp_path / "p"))
