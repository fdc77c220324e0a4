#!/usr/bin/env bash
# Asks for a (spot) TPU pod slice through a queued resource, waits until it is ACTIVE, then installs
# starbucks_jax on it and trains (launch/tpu_pod.sh). When a spot slice is preempted its VMs are
# deleted: run this script again with the same WORKDIR (a gs:// bucket URL, or other storage outside the
# VMs) and the run resumes from its newest checkpoint.
#
#   TPU_NAME=sb-v5e-64 ZONE=us-west4-a ACCELERATOR=v5litepod-64 RUNTIME=v2-alpha-tpuv5-lite \
#       launch/tpu_queued_resource.sh configs/srl_msmarco_bert_base.py gs://my-bucket/runs/msmarco
#
# Optional: PROJECT, SPOT=0 (an on-demand slice), QR_NAME (default $TPU_NAME-qr), and any
# --config.key=value overrides after WORKDIR.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${TPU_NAME:?}" "${ZONE:?}" "${ACCELERATOR:?e.g. v4-32 or v5litepod-64}" "${RUNTIME:?e.g. tpu-ubuntu2204-base}"
(( $# >= 2 )) || { echo "usage: $0 CONFIG WORKDIR [--config.key=value ...]" >&2; exit 2; }
QR_NAME=${QR_NAME:-$TPU_NAME-qr}
project=()
[[ -n "${PROJECT:-}" ]] && project=(--project "$PROJECT")
spot=()
[[ "${SPOT:-1}" == 1 ]] && spot=(--spot)

state() {
  gcloud compute tpus queued-resources describe "$QR_NAME" --zone "$ZONE" "${project[@]}" \
    --format='value(state.state)' 2>/dev/null || true
}
case "$(state)" in
  ACTIVE) echo "queued resource $QR_NAME is already active" ;;
  "" | FAILED | SUSPENDED)
    if [[ -n "$(state)" ]]; then  # a preempted or failed request: delete it and ask again
      gcloud compute tpus queued-resources delete "$QR_NAME" --zone "$ZONE" "${project[@]}" --force --quiet
    fi
    gcloud compute tpus queued-resources create "$QR_NAME" --node-id "$TPU_NAME" --zone "$ZONE" \
      --accelerator-type "$ACCELERATOR" --runtime-version "$RUNTIME" "${project[@]}" "${spot[@]}"
    ;;
esac
until [[ "$(state)" == ACTIVE ]]; do
  echo "waiting for $QR_NAME to become ACTIVE (now: $(state))"
  sleep 60
done
launch/tpu_pod.sh setup
launch/tpu_pod.sh train "$@"
