"""The command line: config files with args, overrides, errors that name the key, convert."""

import json
import os
import subprocess
import sys

import pytest

from lmtransfer import config as config_lib
from tests.configs_loader import load_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cli(*args, workdir):
    env = {**os.environ, "XLA_FLAGS": "", "JAX_PLATFORMS": "cpu"}
    return subprocess.run([sys.executable, "-m", "lmtransfer.main", *args, "--workdir",
                           str(workdir)], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)


def test_parse_arg():
    a = config_lib.parse_arg("head=qa,num_labels=3,flag", head="", num_labels=0, flag=False)
    assert (a.head, a.num_labels, a.flag) == ("qa", 3, True)
    with pytest.raises(ValueError, match="unknown config arg 'hed'"):
        config_lib.parse_arg("hed=qa", head="")


def test_convert_end_to_end(make_hf_model, tmp_path):
    import numpy as np
    import transformers

    torch_model, path = make_hf_model("BertForTokenClassification", num_labels=4)
    r = cli("--config", f"configs/convert.py:head=token_classification,source={path}",
            "--config.seed=7", "--config.mesh.data=1", workdir=tmp_path / "wd")
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads(r.stdout[r.stdout.index("{"):])
    saved = json.loads((tmp_path / "wd" / "config.json").read_text())
    assert saved["seed"] == 7 and saved["convert"]["head"] == "token_classification"
    assert saved["mesh"] == {"data": 1, "fsdp": 1, "tensor": 1}
    reloaded = transformers.BertForTokenClassification.from_pretrained(result["hf"])
    for a, b in zip(torch_model.state_dict().values(), reloaded.state_dict().values(), strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    # Converting into the same workdir again is refused rather than mixing checkpoints.
    r = cli("--config", f"configs/convert.py:source={path}", workdir=tmp_path / "wd")
    assert r.returncode != 0 and "already holds an lmtransfer checkpoint" in r.stderr


@pytest.mark.parametrize("override,message", [
    ("--config.convert.sourc=x", "--config.convert.sourc: convert has no field 'sourc'; "
                                 "did you mean source?"),
    ("--config.nope=1", "--config.nope: the config has no field 'nope'"),
    ("--config.seed=abc", "--config.seed=abc"),
])
def test_bad_overrides_name_the_key(tmp_path, override, message):
    r = cli("--config", "configs/convert.py", override, workdir=tmp_path)
    assert r.returncode == 2
    assert message in r.stderr, r.stderr[-2000:]
    assert not os.path.exists(tmp_path / "config.json")


def test_bad_config_arg_and_values(tmp_path):
    r = cli("--config", "configs/convert.py:hed=qa", workdir=tmp_path)
    assert r.returncode == 2 and "unknown config arg 'hed'" in r.stderr
    config = load_config("convert.py")
    config.mode = "trian"
    with pytest.raises(ValueError, match="config.mode='trian'"):
        config_lib.validate(config)
    config = load_config("convert.py")
    config.sharding_rules = (("embed", "model"),)
    with pytest.raises(ValueError, match="sharding_rules"):
        config_lib.validate(config)


def test_user_errors_after_flag_parsing_are_one_line_exit_2(tmp_path):
    """Bad input the run finds (not the flag parser) is one `error:` line, exit 2, and leaves
    the workdir free for the corrected command."""
    from tests.glue_data import make_glue

    glue = make_glue(str(tmp_path / "glue"), n_train=8, n_dev=4, n_test=4)
    for args, msg in (
            (["configs/glue.py:task=sst3"], "error: config.data.glue_task='sst3'; use one of"),
            (["configs/glue.py:task=sst2", f"--config.data.dir={tmp_path}/none"],
             f"error: {tmp_path}/none/SST-2/train.tsv: file not found; set config.data.dir"),
            (["configs/glue.py:task=sst2", f"--config.data.dir={glue}",
              f"--config.init_from={tmp_path}"],
             f"error: config.init_from={tmp_path}: neither an HF checkpoint directory")):
        r = cli("--config", *args, workdir=tmp_path / "wd")
        assert r.returncode == 2, r.stderr[-3000:]
        assert "Traceback" not in r.stderr
        assert r.stderr.strip().splitlines()[-1].startswith(msg), r.stderr[-2000:]
        assert not os.path.exists(tmp_path / "wd" / "config.json")


def test_deprecations_from_lmtransfer_are_errors():
    """setup.cfg turns deprecation warnings attributed to lmtransfer code into failures."""
    with pytest.raises(DeprecationWarning):
        exec("import warnings\nwarnings.warn('old API', DeprecationWarning)",
             {"__name__": "lmtransfer.somewhere"})


def test_distributed_flags_need_all_three(monkeypatch):
    from lmtransfer.main import init_distributed

    for k in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
        monkeypatch.delenv(k, raising=False)
    assert init_distributed("auto") is False  # no coordinator: a single-process run
    assert init_distributed("off", "localhost:1234", 2, 0) is False
    with pytest.raises(ValueError, match="needs --num_processes and --process_id"):
        init_distributed("auto", "localhost:1234")
    monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "localhost:1234")
    monkeypatch.setenv("JAX_NUM_PROCESSES", "2")
    with pytest.raises(ValueError, match="needs --num_processes and --process_id"):
        init_distributed("auto")  # env gives the address and count but no process id
