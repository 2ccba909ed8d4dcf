#!/usr/bin/env bash
# dsv3's first five minutes: installs and builds what is missing (scripts/setup.sh --demo), makes
# sure the default model is there (models/sotu, trained by dsv3 itself), prints a sample completion
# with its speed, then opens `dsv3 chat` when run in a terminal.
#
#   scripts/demo.sh            sample, then chat (in a terminal); sample only when piped
#   scripts/demo.sh --serve    sample, then `dsv3 serve` with the chat page at http://127.0.0.1:8000/
#   scripts/demo.sh --port N   the port for --serve
set -euo pipefail
cd "$(dirname "$0")/.."

serve=0
port=8000
while [ $# -gt 0 ]; do
  case "$1" in
    --serve) serve=1 ;;
    --port) port="${2:?--port needs a number}"; shift ;;
    -h|--help) sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "demo: unknown option '$1' (try --help)" >&2; exit 2 ;;
  esac
  shift
done

now() { date +%s.%N; }
seconds() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }
t0=$(now)

echo "== 1/3 install and build (scripts/setup.sh --demo; skips what is done)"
bash scripts/setup.sh --demo  # prints its own split: install, then build
t1=$(now)

echo "== 2/3 the default model (models/sotu)"
if [ ! -f models/sotu/model.safetensors ]; then
  echo "demo: models/sotu is missing; training it from its recipe (scripts/train-default-model.sh)"
  bash scripts/train-default-model.sh
fi
build/dsv3 info 2>&1 | sed 's/^/  /'
t2=$(now)

echo "== 3/3 a sample (temperature 0.7, one MTP draft per step)"
prompt="My fellow Americans, tonight"
echo "prompt: $prompt"
build/dsv3 generate --prompt "$prompt" --max-tokens 80 --temperature 0.7 --seed 7 --mtp 1
t3=$(now)

echo
echo "demo: setup $(seconds "$t0" "$t1") s (install and build, split in setup's line above), model $(seconds "$t1" "$t2") s, sample $(seconds "$t2" "$t3") s"

if [ "$serve" = 1 ]; then
  echo "demo: starting dsv3 serve; the chat page is at http://127.0.0.1:$port/ (Ctrl-C stops it)"
  echo "demo: or from a shell:"
  echo "  curl -s http://127.0.0.1:$port/v1/chat/completions -H 'Content-Type: application/json' \\"
  echo "    -d '{\"messages\":[{\"role\":\"user\",\"content\":\"Tell me about the economy.\"}],\"max_tokens\":60}'"
  exec build/dsv3 serve --port "$port" --mtp 1
fi
if [ -t 0 ] && [ -t 1 ]; then
  echo "demo: opening dsv3 chat (/exit or Ctrl-D leaves)"
  exec build/dsv3 chat --mtp 1 --temperature 0.7 --max-tokens 200  # the default model never learned to end a turn
fi
echo "demo: no terminal, so no chat; run scripts/demo.sh in a terminal to chat, or with --serve for the page"
