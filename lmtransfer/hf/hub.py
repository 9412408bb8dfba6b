"""Hugging Face Hub ids as checkpoint sources: `roberta-base`, `org/name`, `org/name@revision`.

`resolve(source, key)` turns an id into the local snapshot directory of the standard HF cache
(`HF_HUB_CACHE`, default `$HF_HOME/hub`), downloading only what a model needs: config.json,
tokenizer files and one weight format (safetensors if the repo has it, else
pytorch_model.bin, else flax_model.msgpack). With `HF_HUB_OFFLINE=1` only the cache is read.
Anything that is not an id (an existing path, a URL, something that looks like a path) comes
back unchanged, so the caller's own "not found" errors stay as they are.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import re

from lmtransfer import paths
from lmtransfer.errors import UserError

log = logging.getLogger(__name__)

CONFIG_FILES = ("config.json", "generation_config.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "added_tokens.json", "vocab.txt", "vocab.json", "merges.txt", "spiece.model",
                   "spm.model", "sentencepiece.bpe.model", "tokenizer.model")
# In order of preference: the first format the repo has is the only one downloaded.
WEIGHT_PATTERNS = (
    ("model.safetensors", "model.safetensors.index.json", "model-*-of-*.safetensors"),
    ("pytorch_model.bin", "pytorch_model.bin.index.json", "pytorch_model-*-of-*.bin"),
    ("flax_model.msgpack",),
)
# A name ending like a file is a path (`model.safetensors`, `ckpt/config.json`), not a repo.
_FILE_SUFFIXES = (".json", ".safetensors", ".bin", ".msgpack", ".txt", ".model", ".pt",
                  ".pth", ".h5", ".ckpt", ".npz", ".py", ".yaml", ".yml", ".gz", ".zip", ".tar")
_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")

# (source, cache dir, weights) -> snapshot dir: a process resolves each id once, so the
# tokenizer and the weights come from the same commit even if the branch moves meanwhile.
_resolved: dict[tuple[str, str, bool], str] = {}


class HubError(UserError, FileNotFoundError):
    """A hub id that could not be turned into a local snapshot (not cached, offline, no
    such repo); the message names the config key, the id and how to pass a local dir."""


def split_id(source: str) -> tuple[str, str | None] | None:
    """(repo id, revision or None) if `source` reads as a hub id, else None (a path)."""
    if not source or _SCHEME.match(source) or source.startswith((".", "/", "~")):
        return None
    if "\\" in source:  # a Windows path
        return None
    repo_id, at, revision = source.partition("@")
    if (at and not revision) or repo_id.lower().endswith(_FILE_SUFFIXES):
        return None
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)  # at most one "/", only [\w.-], no "--" or ".."
    except HFValidationError:
        return None
    return repo_id, revision or None


def _from_url(source: str, key: str) -> str:
    """An HF checkpoint or tokenizer directory in a bucket -> a local copy (transformers and
    safetensors read local files); anything else there (an lmtransfer workdir or checkpoint,
    which Orbax reads in place) unchanged."""
    source = paths.resolve(source)
    if not paths.exists(source):
        raise HubError(f"{key}={source}: nothing there (no such object or directory)")
    names = set(paths.listdir(source)) if paths.isdir(source) else set()
    from lmtransfer.hf.files import WEIGHT_FILES

    if names & {*WEIGHT_FILES, "tokenizer.json", "vocab.txt", "adapter_config.json"}:
        return paths.local_copy(source)
    return source


def resolve(source: str, key: str, *, weights: bool = True) -> str:
    """`source` unless it is a hub id (and not an existing local path); then the local
    snapshot dir of that id, downloaded into the HF cache if needed (weights only when
    `weights`). `key` (e.g. "config.init_from") is what errors name."""
    if paths.is_url(source):
        return _from_url(source, key)
    if not source or os.path.exists(source):
        return source
    parsed = split_id(source)
    if parsed is None:
        return source
    from huggingface_hub import constants

    cache = os.path.abspath(constants.HF_HUB_CACHE)
    memo = (source, cache, weights)
    hit = _resolved.get(memo) or (not weights and _resolved.get((source, cache, True)))
    if hit and os.path.isdir(hit):
        return hit
    repo_id, revision = parsed
    try:
        path = _snapshot(repo_id, revision, weights)
    except OSError as e:  # every huggingface_hub download/lookup error is an OSError
        raise HubError(_message(source, key, constants, e)) from e
    log.info("%s=%s: hub model %s at revision %s (commit %s) -> %s", key, source, repo_id,
             revision or constants.DEFAULT_REVISION, os.path.basename(path), path)
    _resolved[memo] = path
    return path


def _snapshot(repo_id: str, revision: str | None, weights: bool) -> str:
    from huggingface_hub import snapshot_download

    base = [*CONFIG_FILES, *TOKENIZER_FILES]
    if not weights:
        return snapshot_download(repo_id, revision=revision, allow_patterns=base)
    path = None
    for group in WEIGHT_PATTERNS:
        # After the first call the commit is pinned; files already cached are not refetched,
        # and offline the cached tree listing is checked against exactly these patterns.
        rev = os.path.basename(path) if path else revision
        path = snapshot_download(repo_id, revision=rev, allow_patterns=[*base, *group])
        if any(fnmatch.fnmatch(f, p) for f in os.listdir(path) for p in group):
            break
    return path


def _message(source: str, key: str, constants, error: OSError) -> str:
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

    offline = constants.HF_HUB_OFFLINE
    env = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE")
    if isinstance(error, (RepositoryNotFoundError, RevisionNotFoundError)):
        why = (f"the Hub has no such model or revision, or it is private/gated (log in with "
               f"`hf auth login`): {type(error).__name__}")
    elif offline:
        why = (f"it is not in the local HF cache ({constants.HF_HUB_CACHE}) and "
               f"HF_HUB_OFFLINE={env or 1} forbids downloading it")
    else:
        first = (str(error).splitlines() or [""])[0]
        why = (f"it is not in the local HF cache ({constants.HF_HUB_CACHE}) and could not be "
               f"downloaded (HF_HUB_OFFLINE is not set): {type(error).__name__}: {first}")
    repo_id, _, rev = source.partition("@")
    cmd = f"hf download {repo_id}" + (f" --revision {rev}" if rev else "") + " --local-dir DIR"
    return (f"{key}={source}: not a local path, so it was read as a Hugging Face Hub model id, "
            f"but {why}. Download it on a machine with network access (`{cmd}`) and "
            f"pass {key}=DIR instead")
