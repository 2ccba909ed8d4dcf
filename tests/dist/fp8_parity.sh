#!/usr/bin/env bash
# An FP8 checkpoint (E4M3 + 128x128 block scales) cut over 2 ranks against the whole model
# (dsv3_model_check), on a model whose heads and MLP columns fill whole scale blocks per rank.
# Usage: fp8_parity.sh MPIRUN DSV3 DSV3_MODEL_CHECK WORK_DIR
mpirun=$1 dsv3=$2 check=$3 work=$4
rm -rf "$work" && mkdir -p "$work" || exit 1
"$dsv3" init --config "$(dirname "$0")/fp8-model.json" --dtype fp8 --out "$work/model" >"$work/init.log" 2>&1 ||
  { cat "$work/init.log"; exit 1; }
"$mpirun" --oversubscribe -np 2 "$check" "$work/model"
