"""The README's Python example runs as written (offline, on the packaged MiniLM)."""

import os
import re

import transformers

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_readme_python_example(tmp_path, monkeypatch, capsys):
    readme = open(os.path.join(REPO, "README.md")).read()
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    assert blocks, "README has no python example"
    monkeypatch.chdir(tmp_path)
    for code in blocks:
        exec(compile(code, "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert "(2, 32, 384) (2, 384)" in out and "2 6" in out
    assert type(transformers.AutoModelForCausalLM.from_pretrained(
        tmp_path / "runs" / "llama-tiny")).__name__ == "LlamaForCausalLM"
    model, info = transformers.AutoModelForSequenceClassification.from_pretrained(
        tmp_path / "runs" / "minilm-cls", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert model.config.id2label == {0: "neg", 1: "neutral", 2: "pos"}


def test_ci_runs_the_readme_test_command():
    readme = open(os.path.join(REPO, "README.md")).read()
    ci = open(os.path.join(REPO, ".ci", "run")).read()
    command = re.search(r"# 2\. run the tests\n(.+)\n", readme).group(1).strip()
    assert command in ci
