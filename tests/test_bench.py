"""The benchmark's analytic FLOPs and its table (run on the tiny shapes)."""

from lmtransfer import bench
from lmtransfer.models import BertConfig


def test_train_flops_bert_base():
    c = BertConfig.preset("bert-base")
    # 6 * N_matmul * tokens dominates: 12 layers x 7.08M weights + pooler 0.59M = 85.5M.
    flops = bench.train_flops(c, batch=1, length=128)
    assert abs(flops / (6 * 85.5e6 * 128) - 1) < 0.05


def test_bench_runs_and_prints_both_frameworks(minilm_path, capsys):
    bench.main(["--model", minilm_path, "--batch", "2", "--lengths", "8", "--steps", "1"])
    out = capsys.readouterr().out
    assert "| 8 | lmtransfer (JAX) |" in out and "| 8 | transformers (PyTorch) |" in out
