"""The GCS emulator the bucket tests run (`python -m tests.gcs_emulator --port N`):
gcp-storage-emulator, in memory, with a bucket `bkt`, plus two behaviours of the GCS JSON API
that it lacks and tensorstore's conditional writes (Orbax's OCDBT manifests) rely on: a
download reports the object's generation in `x-goog-generation`, and an upload with
`ifGenerationMatch` fails with 412 unless the object's generation is that (0: no object)."""

import argparse
import threading
import time
from http import HTTPStatus

from gcp_storage_emulator import server
from gcp_storage_emulator.exceptions import NotFound
from gcp_storage_emulator.handlers import objects

_download, _insert = objects.download, objects.insert
_writes = threading.Lock()  # a conditional upload checks and writes as one step


def _generation(storage, bucket: str, name: str) -> str | None:
    try:
        return storage.get_file_obj(bucket, name)["generation"]
    except NotFound:
        return None


def download(request, response, storage, *args, **kwargs):
    gen = _generation(storage, request.params["bucket_name"], request.params["object_id"])
    if gen is not None:
        response["x-goog-generation"] = gen
        response["x-goog-metageneration"] = "1"
    return _download(request, response, storage, *args, **kwargs)


def insert(request, response, storage, *args, **kwargs):
    with _writes:
        want = (request.query.get("ifGenerationMatch") or [None])[0]
        name = (request.query.get("name") or [None])[0]
        if want is not None and name is not None:
            have = _generation(storage, request.params["bucket_name"], name) or "0"
            if have != want:
                response.status = HTTPStatus.PRECONDITION_FAILED
                response.json({"error": {"code": 412, "message": "conditionNotMet"}})
                return None
        return _insert(request, response, storage, *args, **kwargs)


def _patch_routes():
    objects.download, objects.insert = download, insert  # objects.get calls download()
    swap = {_download: download, _insert: insert}
    server.HANDLERS = tuple((pattern, {m: swap.get(f, f) for m, f in methods.items()})
                           for pattern, methods in server.HANDLERS)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    a = p.parse_args()
    _patch_routes()
    srv = server.create_server("localhost", a.port, in_memory=True, default_bucket="bkt")
    srv.start()
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    main()
