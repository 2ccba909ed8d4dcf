#!/usr/bin/env bash
# Redundant experts end to end: router statistics from a generation (dsv3 generate --expert-stats),
# a plan with one redundant slot per rank (dsv3 placement), and the same greedy tokens from
# `mpirun -np 2` with the plan (DSV3_PLACEMENT) as from one process; a plan for another rank count
# is refused with a clear error.
# Usage: placement_ranks.sh MPIRUN DSV3 MODEL WORK_DIR
mpirun=$1 dsv3=$2 model=$3 work=$4
fail() { echo "placement_ranks: FAILED: $*"; exit 1; }
rm -rf "$work" && mkdir -p "$work" || exit 1
generate=("$dsv3" generate --model "$model" --prompt "The state of the union" --max-tokens 40 --print-ids)
one=$("${generate[@]}" --expert-stats "$work/stats.json" 2>"$work/one.log" | tail -1) || { cat "$work/one.log"; fail "dsv3 generate"; }
"$dsv3" placement --stats "$work/stats.json" --ranks 2 --redundant 1 --out "$work/plan.json" || fail "dsv3 placement"
grep -q '"replicas"' "$work/plan.json" || fail "no plan written"
two=$(DSV3_PLACEMENT="$work/plan.json" timeout 60 "$mpirun" --oversubscribe -np 2 -x DSV3_PLACEMENT \
  "${generate[@]}" 2>"$work/two.log" | tail -1) || { cat "$work/two.log"; fail "mpirun -np 2 dsv3 generate"; }
echo "one process: $one"
echo "2 ranks, plan: $two"
[ -n "$one" ] && [ "$one" = "$two" ] || fail "the tokens differ"
DSV3_PLACEMENT="$work/plan.json" timeout 60 "$mpirun" --oversubscribe -np 3 -x DSV3_PLACEMENT "${generate[@]}" \
  >"$work/three.out" 2>&1 && fail "a plan for 2 ranks was accepted by 3"
grep -q "a plan for 2 ranks, this run has 3" "$work/three.out" || { cat "$work/three.out"; fail "no clear error"; }
echo "placement_ranks: ok"
