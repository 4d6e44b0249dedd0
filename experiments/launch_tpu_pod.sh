#!/usr/bin/env bash
# Pretrains on a Cloud TPU pod slice: the same command runs on every host of the slice, and
# `--distributed` lets jax.distributed find the coordinator from the TPU metadata.
#
#   REPO=<git URL> TPU_NAME=byol-v4-64 ZONE=us-central2-b WORKDIR=gs://my-bucket/byol_r50 \
#     bash experiments/launch_tpu_pod.sh --config.optim.base_lr=0.2
#
# ImageNet must be prepared for TFDS under DATA_DIR (a gs:// bucket readable by the TPU VMs);
# WORKDIR should be a bucket too, so that every host sees the same checkpoints. Extra arguments
# go to byol_jax.main. Rerunning the script after a preemption resumes from the last checkpoint.
set -euo pipefail
: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}" "${WORKDIR:?set WORKDIR}" "${REPO:?set REPO}"
DATA_DIR="${DATA_DIR:-gs://my-bucket/tensorflow_datasets}"
CONFIG="${CONFIG:-configs/byol_r50.py}"
EXTRA="$*"

gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$ZONE" --worker=all --command "
  set -e
  [ -d byol_jax ] || git clone $REPO byol_jax
  cd byol_jax && git pull --ff-only
  python3 -m venv .venv && . .venv/bin/activate
  pip install -q -e . 'jax[tpu]' -f https://storage.googleapis.com/jax-releases/libtpu_releases.html
  python -m byol_jax.main --distributed --config=$CONFIG --workdir=$WORKDIR \
    --config.data.data_dir=$DATA_DIR $EXTRA
"
