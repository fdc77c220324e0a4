#!/usr/bin/env bash
# Runs starbucks_jax on every host of a Cloud TPU VM pod slice through
# `gcloud compute tpus tpu-vm ssh --worker=all`. Each host runs the same train command; JAX finds the
# pod from the TPU metadata (starbucks_jax/distributed.py), so no coordinator needs to be given.
#
#   TPU_NAME=my-v4-32 ZONE=us-central2-b launch/tpu_pod.sh setup
#   TPU_NAME=my-v4-32 ZONE=us-central2-b launch/tpu_pod.sh train configs/srl_msmarco_bert_base.py \
#       gs://my-bucket/runs/msmarco [--config.mesh.fsdp=8 ...]
#   TPU_NAME=my-v4-32 ZONE=us-central2-b launch/tpu_pod.sh dry_run configs/srl_msmarco_bert_base.py
#
# setup   copies this checkout (git archive of HEAD) to every host and installs it with jax[tpu].
# train   runs the train command on every host, in the foreground, under nohup, its output also in
#         ~/starbucks_jax/train.log on each host. Run it again after a preemption: it resumes.
# dry_run compiles the step for the configured mesh on the pod and prints memory per device.
#
# The workdir is one place every host sees: a gs:// URL (each host writes its own shards of every
# checkpoint there through Orbax, process 0 the metrics, TensorBoard events and export; the VM's service
# account needs write access to the bucket), or else a shared mount (Filestore/NFS, gcsfuse). The model,
# data and evaluation files may be gs:// URLs too. Optional: PROJECT (gcloud project), PYTHON (default
# python3), EXTRA_PIP (more packages to install, e.g. wandb).
set -euo pipefail
cd "$(dirname "$0")/.."
: "${TPU_NAME:?set TPU_NAME to the name of the TPU VM}" "${ZONE:?set ZONE to its zone}"
PYTHON=${PYTHON:-python3}
gcloud_ssh=(gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$ZONE" --worker=all)
gcloud_scp=(gcloud compute tpus tpu-vm scp --zone "$ZONE" --worker=all)
if [[ -n "${PROJECT:-}" ]]; then
  gcloud_ssh+=(--project "$PROJECT")
  gcloud_scp+=(--project "$PROJECT")
fi

command=${1:-}
shift || true
case "$command" in
  setup)
    archive=$(mktemp --suffix=.tar.gz)
    git archive --format=tar.gz --prefix=starbucks_jax/ HEAD > "$archive"
    "${gcloud_scp[@]}" "$archive" "$TPU_NAME:~/starbucks_jax.tar.gz"
    rm -f "$archive"
    "${gcloud_ssh[@]}" --command "set -e; rm -rf ~/starbucks_jax; tar xzf ~/starbucks_jax.tar.gz -C ~; \
      cd ~/starbucks_jax; $PYTHON -m pip install --quiet -U pip; \
      $PYTHON -m pip install --quiet -e . 'jax[tpu]' ${EXTRA_PIP:-}"
    ;;
  train)
    (( $# >= 2 )) || { echo "usage: $0 train CONFIG WORKDIR [--config.key=value ...]" >&2; exit 2; }
    config=$(printf %q "$1") workdir=$(printf %q "$2")
    shift 2
    overrides=$( (( $# )) && printf " %q" "$@" || true)
    train="$PYTHON -m starbucks_jax.train --config $config --workdir $workdir$overrides"
    "${gcloud_ssh[@]}" --command "cd ~/starbucks_jax && nohup $train 2>&1 | tee -a train.log"
    ;;
  dry_run)
    (( $# >= 1 )) || { echo "usage: $0 dry_run CONFIG [--config.key=value ...]" >&2; exit 2; }
    config=$(printf %q "$1")
    shift
    overrides=$( (( $# )) && printf " %q" "$@" || true)
    "${gcloud_ssh[@]}" --command "cd ~/starbucks_jax && $PYTHON -m starbucks_jax.train --dry_run --config $config$overrides"
    ;;
  *)
    echo "usage: $0 setup | train CONFIG WORKDIR [overrides] | dry_run CONFIG [overrides]" >&2
    exit 2
    ;;
esac
