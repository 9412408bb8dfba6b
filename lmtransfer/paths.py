"""Where lmtransfer reads and writes: local paths and URLs through one layer.

A URL (`gs://bucket/dir`, `s3://...`, any scheme fsspec knows; gs:// is `gcsfs`) goes through
fsspec; anything else is a local path (`~` expanded, made absolute). Orbax writes checkpoints
to the same URLs itself (epath + tensorstore), in its commit-file mode on object stores.

Object stores have no rename and no append, so what holds there:
- a file written here appears whole or not at all (one object upload; local files go through
  a temporary file and a rename);
- a directory export is uploaded file by file with its marker file (`config.json`) last, so a
  reader never sees a marker without the rest;
- files that grow (metrics.jsonl, TensorBoard events) are kept in a local staging directory
  and uploaded whole at each sync (`Staged`);
- directories that must be local (tokenizers, HF checkpoints read by transformers) are
  downloaded once into `~/.cache/lmtransfer/remote`, keyed by the URL and the objects'
  sizes and modification times.

Errors name the path and, for gs://, the credential set-up (`PathError`).
"""

from __future__ import annotations

import builtins
import contextlib
import glob as glob_lib
import hashlib
import json
import os
import posixpath
import re
import shutil
import tempfile

from lmtransfer.errors import UserError

_URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")
CACHE = os.path.join("~", ".cache", "lmtransfer", "remote")
CREDENTIALS = {
    "gs": "run `gcloud auth application-default login` (or set GOOGLE_APPLICATION_CREDENTIALS "
          "to a service-account key file; on a TPU/GCE VM its service account needs write "
          "access to the bucket)",
    "s3": "set AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or an AWS profile), and "
          "AWS_ENDPOINT_URL for an S3-compatible store",
}


class PathError(UserError, ValueError):
    """A path or URL that cannot be read or written; the message names it and what to do."""


def is_url(path) -> bool:
    return bool(_URL.match(str(path))) and not str(path).startswith("file://")


def resolve(path: str) -> str:
    """A URL unchanged (without a trailing '/'); a local path expanded and made absolute;
    '' stays ''."""
    path = str(path)
    if not path:
        return path
    if is_url(path):
        return path.rstrip("/")
    return os.path.abspath(os.path.expanduser(path))


def join(path: str, *parts: str) -> str:
    return posixpath.join(str(path), *parts) if is_url(path) else os.path.join(path, *parts)


def dirname(path: str) -> str:
    return posixpath.dirname(path) if is_url(path) else os.path.dirname(path)


def basename(path: str) -> str:
    return posixpath.basename(str(path).rstrip("/"))


def _fs(path: str):
    import fsspec

    if is_url(path):
        fs, inner = fsspec.core.url_to_fs(path)
        return fs, inner
    return fsspec.filesystem("file"), path


def _url(path: str, inner: str) -> str:
    """fsspec's scheme-less name of an object back to a URL like `path`."""
    scheme = path.split("://", 1)[0]
    return f"{scheme}://{inner.split('://', 1)[-1]}"


def _ask(path: str, local, method: str):
    """`local(path)` for a local path, else the fsspec filesystem's `method` on the URL."""
    if not is_url(path):
        return local(path)
    fs, p = _fs(path)
    with _errors(path, "reading"):
        return getattr(fs, method)(p)


def exists(path: str) -> bool:
    return _ask(path, os.path.exists, "exists")


def isdir(path: str) -> bool:
    return _ask(path, os.path.isdir, "isdir")


def isfile(path: str) -> bool:
    return _ask(path, os.path.isfile, "isfile")


def getsize(path: str) -> int:
    return int(_ask(path, os.path.getsize, "size"))


def getmtime(path: str) -> float:
    t = _ask(path, os.path.getmtime, "modified")  # fsspec gives a datetime
    return t if isinstance(t, float) else t.timestamp()


def listdir(path: str) -> list[str]:
    if not is_url(path):
        return sorted(os.listdir(path))
    fs, p = _fs(path)
    with _errors(path, "reading"):
        return sorted(basename(x) for x in fs.ls(p, detail=False) if x.rstrip("/") != p)


def files(root: str) -> list[str]:
    """Every file under `root`, as sorted paths relative to it."""
    if not is_url(root):
        return sorted(os.path.relpath(os.path.join(d, f), root)
                      for d, _, fs in os.walk(root) for f in fs)
    fs, p = _fs(root)
    with _errors(root, "reading"):
        return sorted(k[len(p):].lstrip("/") for k in fs.find(p))


def glob(pattern: str) -> list[str]:
    """Sorted matches of a glob (a plain path matches itself if it exists)."""
    if not is_url(pattern):
        return sorted(glob_lib.glob(os.path.expanduser(pattern)))
    fs, p = _fs(pattern)
    with _errors(pattern, "reading"):
        return sorted(_url(pattern, x) for x in fs.glob(p))


def makedirs(path: str) -> None:
    """Local directories are created; object stores have none to create."""
    if not is_url(path):
        os.makedirs(path, exist_ok=True)


def remove(path: str) -> None:
    """Removes a file or a directory tree, if there is one."""
    if not is_url(path):
        if os.path.isdir(path):
            shutil.rmtree(path)
        elif os.path.exists(path):
            os.remove(path)
        return
    fs, p = _fs(path)
    with _errors(path, "removing"):
        if fs.exists(p):
            fs.rm(p, recursive=True)


def open(path: str, mode: str = "r", **kwargs):  # noqa: A001 - the layer's open()
    if not is_url(path):
        return builtins.open(path, mode, **kwargs)
    fs, p = _fs(path)
    with _errors(path, "reading" if "r" in mode else "writing"):
        return fs.open(p, mode, **kwargs)


def read_text(path: str) -> str:
    with open(path, "r", encoding="utf-8") as f:
        return f.read()


def read_json(path: str):
    return json.loads(read_text(path))


@contextlib.contextmanager
def _replacing(path: str):
    """Yields a temporary name beside the local file `path`, renamed onto it if the block
    succeeds and removed if it raises: readers see the old file or the whole new one."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".",
                               dir=os.path.dirname(path) or ".")
    os.close(fd)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def write_bytes(path: str, data: bytes) -> None:
    """Whole or not at all: a temporary file renamed into place, or one object upload."""
    if is_url(path):
        fs, p = _fs(path)
        with _errors(path, "writing"):
            fs.pipe_file(p, data)
        return
    with _replacing(path) as tmp, builtins.open(tmp, "wb") as f:
        f.write(data)


def write_text(path: str, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def download(url: str, local: str) -> None:
    """Copies the object `url` to the local file `local`, streamed, renamed into place."""
    fs, p = _fs(url)
    with _replacing(local) as tmp, _errors(url, "reading"):
        fs.get_file(p, tmp)


def upload(local: str, url: str) -> None:
    """Copies the local file `local` to the object `url`, streamed (one object, whole)."""
    fs, p = _fs(url)
    with _errors(url, "writing"):
        fs.put_file(local, p)


def upload_dir(local: str, url: str, last: tuple[str, ...] = ("config.json",)) -> None:
    """Copies the local directory `local` to `url`, replacing what was there; the files named
    in `last` go last, so a reader that waits for them sees a complete directory."""
    remove(url)
    files = sorted(os.path.relpath(os.path.join(d, f), local)
                   for d, _, fs in os.walk(local) for f in fs)
    files.sort(key=lambda f: f in last)
    fs, p = _fs(url)
    with _errors(url, "writing"):
        for f in files:
            fs.put_file(os.path.join(local, f), posixpath.join(p, f))


@contextlib.contextmanager
def local_dir_for(out_dir: str, last: tuple[str, ...] = ("config.json",)):
    """A local directory to build an export in, that replaces `out_dir` on success: renamed
    into place locally, uploaded with `upload_dir` to a URL. A crash leaves no half export."""
    if is_url(out_dir):
        tmp = tempfile.mkdtemp(prefix="lmtransfer-export-")
        try:
            yield tmp
            upload_dir(tmp, out_dir, last)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return
    out_dir = os.path.abspath(out_dir)
    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".tmp-" + os.path.basename(out_dir) + "-", dir=parent)
    try:
        yield tmp
        if os.path.exists(out_dir):
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def local_copy(path: str) -> str:
    """A local directory with the contents of `path`: `path` itself if it is local, else a
    cached download (reused while the objects' names, sizes and times are unchanged)."""
    if not is_url(path):
        return path
    fs, p = _fs(path)
    with _errors(path, "reading"):
        found = fs.find(p, detail=True)
    if not found:
        raise PathError(f"{path}: no such directory (or it is empty)")
    listing = sorted((k[len(p):].lstrip("/"), v.get("size"), str(v.get("updated") or
                      v.get("mtime") or v.get("LastModified") or "")) for k, v in found.items())
    key = hashlib.sha256(json.dumps([path, listing]).encode()).hexdigest()[:16]
    out = os.path.join(os.path.expanduser(CACHE), f"{basename(path)}-{key}")
    if os.path.isdir(out):
        return out
    os.makedirs(os.path.dirname(out), exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".tmp-", dir=os.path.dirname(out))
    try:
        with _errors(path, "reading"):
            for name, _, _ in listing:
                if name:
                    dst = os.path.join(tmp, name)
                    os.makedirs(os.path.dirname(dst), exist_ok=True)
                    fs.get_file(posixpath.join(p, name), dst)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


class Staged:
    """A local directory that mirrors `remote` (a directory URL): what is written under
    `local` is uploaded by `sync()`. For a local `remote`, `local` is `remote` itself.
    `pull` first downloads what is there, so files that grow carry on after a resume."""

    def __init__(self, remote: str, pull: tuple[str, ...] = ()):
        self.remote = remote
        if not is_url(remote):
            self.local = remote
            return
        key = hashlib.sha256(remote.encode()).hexdigest()[:16]
        self.local = tempfile.mkdtemp(prefix=f"lmtransfer-staged-{key}-")
        for name in pull:
            if exists(join(remote, name)):
                fs, p = _fs(remote)
                with _errors(remote, "reading"):
                    fs.get_file(posixpath.join(p, name), os.path.join(self.local, name))

    def sync(self) -> None:
        if self.local == self.remote:
            return
        fs, p = _fs(self.remote)
        with _errors(self.remote, "writing"):
            for d, _, files in os.walk(self.local):
                for f in files:
                    rel = os.path.relpath(os.path.join(d, f), self.local)
                    fs.put_file(os.path.join(d, f), posixpath.join(p, rel))

    def close(self) -> None:
        self.sync()
        if self.local != self.remote:
            shutil.rmtree(self.local, ignore_errors=True)


def check_writable(path: str) -> None:
    """Fails early, before any training, if `path` (a URL) cannot be written by both the file
    layer and tensorstore (which writes Orbax's arrays): a probe object written and removed."""
    if not is_url(path):
        return
    probe = join(path, ".lmtransfer-write-probe")
    try:
        write_bytes(probe, b"ok")
    except PathError:
        raise
    except OSError as e:  # e.g. FileNotFoundError: no such bucket
        raise PathError(_message(path, "writing", e)) from e
    try:
        import tensorstore as ts

        kv = ts.KvStore.open(path.rstrip("/") + "/").result()
        kv.write(".lmtransfer-write-probe-ts", b"ok").result()
        kv.write(".lmtransfer-write-probe-ts", None).result()  # None deletes the key
    except ValueError as e:  # tensorstore's error type for a failed request
        raise PathError(_message(path, "writing (tensorstore, for checkpoints)", e)) from e
    finally:
        remove(probe)


def _message(path: str, what: str, e: BaseException) -> str:
    scheme = path.split("://", 1)[0] if is_url(path) else ""
    how = CREDENTIALS.get(scheme, "check the path and your access to it")
    return (f"{path}: {what} failed ({type(e).__name__}: {str(e).strip()[:300]}). Check that "
            f"the bucket exists and you may use it; credentials: {how}")


@contextlib.contextmanager
def _errors(path: str, what: str):
    try:
        yield
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        raise
    except PathError:
        raise
    except OSError as e:  # gcsfs' HttpError, permission and auth failures are OSErrors
        raise PathError(_message(path, what, e)) from e
    except Exception as e:  # google.auth's DefaultCredentialsError and kin
        if type(e).__module__.split(".")[0] in ("google", "gcsfs", "aiohttp", "botocore",
                                               "s3fs", "fsspec"):
            raise PathError(_message(path, what, e)) from e
        raise
