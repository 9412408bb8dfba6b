"""The README and docs tell the truth: the Python example runs as written (offline, on the
packaged MiniLM), every `lmtransfer.main` / `prepare` command in them names config args and
fields that exist, every relative link resolves, and CI runs the README's test command."""

import glob
import os
import re
import shlex

import pytest
import transformers

from lmtransfer import config as config_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGES = ["README.md", *sorted(os.path.relpath(p, REPO)
                              for p in glob.glob(os.path.join(REPO, "docs", "*.md")))]


def read(page):
    return open(os.path.join(REPO, page)).read()


def test_python_api_example(tmp_path, monkeypatch, capsys):
    blocks = re.findall(r"```python\n(.*?)```", read("docs/python.md"), flags=re.S)
    assert blocks, "docs/python.md has no python example"
    monkeypatch.chdir(tmp_path)
    for code in blocks:
        exec(compile(code, "docs/python.md", "exec"), {})
    out = capsys.readouterr().out
    assert "(2, 32, 384) (2, 384)" in out and "2 6" in out
    assert type(transformers.AutoModelForCausalLM.from_pretrained(
        tmp_path / "runs" / "llama-tiny")).__name__ == "LlamaForCausalLM"
    model, info = transformers.AutoModelForSequenceClassification.from_pretrained(
        tmp_path / "runs" / "minilm-cls", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert model.config.id2label == {0: "neg", 1: "neutral", 2: "pos"}


def commands():
    """(page, argv after the module) of every lmtransfer.main / lmtransfer.prepare command in
    the README's and docs' shell blocks (continuation lines joined)."""
    out = []
    for page in PAGES:
        for block in re.findall(r"```(?:bash)?\n(.*?)```", read(page), flags=re.S):
            for line in block.replace("\\\n", " ").splitlines():
                line = line.split("  #")[0].split(" | ")[0]
                m = re.search(r"python -m lmtransfer\.(main|prepare) (.*)", line)
                if m and "<" not in m.group(2) and "$" not in m.group(2):
                    out.append((page, shlex.split(m.group(2))))
    return out


@pytest.mark.parametrize("page,argv", commands(), ids=lambda x: x if isinstance(x, str)
                         else " ".join(x)[:60])
def test_documented_commands_name_real_config_args_and_fields(page, argv):
    config_lib.check_overrides(argv)  # loads the config file with its :args, checks each key


def test_front_page_is_short_and_links_resolve():
    assert len(read("README.md").splitlines()) < 150
    for page in PAGES:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", read(page)):
            if "://" in target:
                continue
            path = os.path.normpath(os.path.join(REPO, os.path.dirname(page), target))
            assert os.path.exists(path), f"{page}: broken link {target}"


def test_ci_runs_the_readme_test_command():
    command = re.search(r"# 2\. run the tests\n(.+)\n", read("README.md")).group(1).strip()
    assert command in read(".ci/run")
