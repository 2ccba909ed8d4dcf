#!/usr/bin/env bash
# A rank killed (SIGKILL) in the middle of `dsv3 generate` under mpirun -np 2: every rank must
# exit, the job non-zero, within 10 seconds of the kill; nothing may hang.
# Usage: kill_rank.sh MPIRUN DSV3 WORK_DIR
mpirun=$1 dsv3=$2 work=$3
fail() { echo "kill_rank: FAILED: $*"; [ -n "$job" ] && kill -9 "$job" 2>/dev/null; exit 1; }
rm -rf "$work" && mkdir -p "$work" || exit 1
# A model with a long context and a generation past its end-of-sequence token, so that it outlasts
# the test's wait before the kill (a random model's greedy continuation may end anywhere).
"$dsv3" init --config "$(dirname "$0")/long-context-model.json" --out "$work/model" >"$work/init.log" 2>&1 ||
  { cat "$work/init.log"; fail "dsv3 init"; }
"$mpirun" --oversubscribe -np 2 "$dsv3" generate --model "$work/model" --prompt-ids 1,2,3 --max-tokens 30000 \
  --cache-tokens 32768 --ignore-eos >"$work/out.log" 2>&1 &
job=$!
# The job's processes, read from /proc (no procps on a bare Debian): "$1" given, those of that rank.
job_processes() {
  for d in /proc/[0-9]*; do
    tr '\0' ' ' 2>/dev/null <"$d/cmdline" | grep -q -- "^$dsv3 generate --model $work/model" || continue
    [ -z "$1" ] || tr '\0' '\n' 2>/dev/null <"$d/environ" | grep -qx "OMPI_COMM_WORLD_RANK=$1" || continue
    echo "${d#/proc/}"
  done
}
rank1=
for _ in $(seq 200); do
  rank1=$(job_processes 1)
  [ -n "$rank1" ] && break
  kill -0 "$job" 2>/dev/null || { cat "$work/out.log"; fail "the job ended before rank 1 was seen"; }
  sleep 0.05
done
[ -n "$rank1" ] || fail "rank 1 never started"
sleep 2  # well into the generation (loading this model takes milliseconds)
kill -0 "$job" 2>/dev/null || { cat "$work/out.log"; fail "the job ended before a rank was killed"; }
kill -9 "$rank1"
killed=$(date +%s%N)
for _ in $(seq 300); do
  kill -0 "$job" 2>/dev/null || break
  sleep 0.1
done
elapsed_ms=$(( ($(date +%s%N) - killed) / 1000000 ))
kill -0 "$job" 2>/dev/null && fail "the job hung: still running ${elapsed_ms} ms after rank 1 was killed"
wait "$job"
rc=$?
cat "$work/out.log" | tail -5
echo "kill_rank: mpirun exited $rc, ${elapsed_ms} ms after rank 1 was killed"
[ "$rc" -ne 0 ] || fail "mpirun exited 0 although a rank was killed"
[ "$elapsed_ms" -le 10000 ] || fail "the job took ${elapsed_ms} ms to end (more than 10 s)"
left=$(job_processes | wc -l)
[ "$left" -eq 0 ] || fail "$left process(es) of the job still running"
echo "kill_rank: ok"
