#!/usr/bin/env bash
# One rank of three fails (mode throw: an exception; kill: SIGKILL) while the others wait in an
# all-reduce: the job must end non-zero within 10 seconds, no rank finishing, and a thrown failure
# must be printed once as "rank R: reason".
# Usage: expect_abort.sh MPIRUN DSV3_MPI_CHECK throw|kill
mpirun=$1 check=$2 mode=$3
start=$(date +%s%N)
out=$(timeout -k 5 30 "$mpirun" --oversubscribe -np 3 "$check" "$mode" 2>&1)
rc=$?
elapsed_ms=$(( ($(date +%s%N) - start) / 1000000 ))
printf '%s\n' "$out"
echo "expect_abort: mpirun exited $rc after ${elapsed_ms} ms"
fail() { echo "expect_abort: FAILED: $*"; exit 1; }
[ "$elapsed_ms" -ge 30000 ] && fail "the job hung (ended by the 30 s guard, status $rc)"
[ "$rc" -ne 0 ] || fail "mpirun exited 0 although a rank failed"
[ "$elapsed_ms" -le 10000 ] || fail "the job took ${elapsed_ms} ms to end (more than 10 s)"
for r in 0 1; do
  grep -q "^rank $r: waiting in an all-reduce$" <<<"$out" || fail "rank $r never reached the all-reduce"
done
grep -q "finished, which it should not have" <<<"$out" && fail "a rank went on past the failed collective"
if [ "$mode" = throw ]; then
  n=$(grep -c "^rank 2: deliberate failure while loading its part$" <<<"$out")
  [ "$n" -eq 1 ] || fail "expected 'rank 2: deliberate failure while loading its part' once, saw it $n times"
fi
echo "expect_abort: ok"
