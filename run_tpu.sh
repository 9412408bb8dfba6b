#!/usr/bin/env bash
# Runs `python -m lmtransfer.main ...` on every worker of a Cloud TPU VM (single host or pod).
#
#   ./run_tpu.sh --tpu NAME --zone ZONE [--project P] [--create --accelerator v4-32
#                [--version tpu-ubuntu2204-base] [--spot]] [--mount B] [--no-install]
#                [--dry-run] -- --config configs/pretrain.py:objective=mlm,model=bert-base \
#                --config.data.tfds_name=wikipedia/20230601.en --workdir gs://B/runs/bert
#
# Steps (each a gcloud command; --dry-run prints them instead of running them):
#   1. --create: create the TPU VM (`gcloud compute tpus tpu-vm create`).
#   2. copy this checkout (git archive of HEAD, so uncommitted files never ship) to all workers.
#   3. install the project on all workers (jax[tpu] at the version setup.cfg pins, then the
#      package). Multi-host runs need a --workdir that every worker sees (checkpoints are
#      written by all hosts): a gs:// URL is written directly, with the VM's service account.
#      --mount B (optional, for tools that want a filesystem) also installs gcsfuse and
#      mounts gs://B at ~/bucket.
#   4. launch the same command on all workers with --distributed=on: jax.distributed finds
#      the coordinator, the process count and this worker's index from the TPU metadata.
# Rerunning the same command resumes from the workdir's latest checkpoint.
set -euo pipefail

TPU="" ZONE="" PROJECT="" ACCELERATOR="" VERSION="tpu-ubuntu2204-base" BUCKET=""
CREATE=0 SPOT=0 INSTALL=1 DRY=0
usage() { sed -n '2,7p' "$0" >&2; exit 2; }
while [[ $# -gt 0 ]]; do
  case "$1" in
    --tpu) TPU="$2"; shift 2 ;;
    --zone) ZONE="$2"; shift 2 ;;
    --project) PROJECT="$2"; shift 2 ;;
    --accelerator) ACCELERATOR="$2"; shift 2 ;;
    --version) VERSION="$2"; shift 2 ;;
    --mount) BUCKET="$2"; shift 2 ;;
    --create) CREATE=1; shift ;;
    --spot) SPOT=1; shift ;;
    --no-install) INSTALL=0; shift ;;
    --dry-run) DRY=1; shift ;;
    --) shift; break ;;
    -h|--help) usage ;;
    *) echo "run_tpu.sh: unknown option $1 (put lmtransfer.main arguments after --)" >&2; exit 2 ;;
  esac
done
[[ -n "$TPU" && -n "$ZONE" ]] || { echo "run_tpu.sh: --tpu and --zone are required" >&2; usage; }
[[ $# -gt 0 ]] || { echo "run_tpu.sh: give the lmtransfer.main arguments after --" >&2; usage; }
if [[ $CREATE == 1 && -z "$ACCELERATOR" ]]; then
  echo "run_tpu.sh: --create needs --accelerator (e.g. v4-8, v4-32, v5litepod-16)" >&2; exit 2
fi

cd "$(dirname "$0")"
JAX_VERSION=$(sed -n 's/^ *jax==\([0-9.]*\).*/\1/p' setup.cfg | head -1)
GCLOUD=(gcloud compute tpus tpu-vm)
WHERE=(--zone "$ZONE")
[[ -n "$PROJECT" ]] && WHERE+=(--project "$PROJECT")
MAIN_ARGS=$(printf ' %q' "$@")

run() {  # prints (dry run) or runs one command
  if [[ $DRY == 1 ]]; then printf '%q ' "$@"; echo; else "$@"; fi
}
on_all() {  # a shell command on every worker
  run "${GCLOUD[@]}" ssh "$TPU" "${WHERE[@]}" --worker=all --command "$1"
}

if [[ $CREATE == 1 ]]; then
  EXTRA=()
  [[ $SPOT == 1 ]] && EXTRA+=(--spot)
  run "${GCLOUD[@]}" create "$TPU" "${WHERE[@]}" --accelerator-type "$ACCELERATOR" \
    --version "$VERSION" "${EXTRA[@]}"
fi

ARCHIVE=/tmp/lmtransfer-$$.tar.gz
[[ $DRY == 1 ]] || trap 'rm -f "$ARCHIVE"' EXIT
run git archive --format=tar.gz -o "$ARCHIVE" HEAD
run "${GCLOUD[@]}" scp "$ARCHIVE" "$TPU:lmtransfer.tar.gz" "${WHERE[@]}" --worker=all
on_all "rm -rf ~/lmtransfer && mkdir ~/lmtransfer && tar xzf ~/lmtransfer.tar.gz -C ~/lmtransfer"

if [[ $INSTALL == 1 ]]; then
  on_all "cd ~/lmtransfer && pip install -q 'jax[tpu]==$JAX_VERSION' && pip install -q -e ."
fi
if [[ -n "$BUCKET" ]]; then
  on_all "command -v gcsfuse >/dev/null || { echo deb https://packages.cloud.google.com/apt gcsfuse-\$(lsb_release -cs) main | sudo tee /etc/apt/sources.list.d/gcsfuse.list && curl -fsSL https://packages.cloud.google.com/apt/doc/apt-key.gpg | sudo tee /etc/apt/trusted.gpg.d/gcsfuse.asc && sudo apt-get update -q && sudo apt-get install -yq gcsfuse; }; mkdir -p ~/bucket && (mountpoint -q ~/bucket || gcsfuse --implicit-dirs $BUCKET ~/bucket)"
fi

on_all "cd ~/lmtransfer && python -m lmtransfer.main --distributed=on$MAIN_ARGS"
