#!/usr/bin/env python3
"""Held-out bits per byte computed apart from dsv3 eval, for tests/test_cli_eval.cpp: token ids from
`dsv3 tokenize`, logits from `dsv3 forward`, and the arithmetic (log-softmax in float64, add-one
unigram counts, UTF-8 bytes) here, in plain Python.

Usage: bits_per_byte_reference.py DSV3 MODEL TOKENIZER CONTEXT WORKDIR --held-out FILE... --baseline FILE...
Prints one JSON object: model_bits_per_byte, unigram_bits_per_byte, held_out_bytes, held_out_tokens."""
import json, math, os, struct, subprocess, sys


def encode(dsv3, tokenizer, texts, workdir):
    path = os.path.join(workdir, "texts.jsonl")
    with open(path, "w", encoding="utf-8") as f:
        for t in texts:
            f.write(json.dumps({"text": t}) + "\n")
    out = subprocess.run([dsv3, "tokenize", "--tokenizer", tokenizer, "--jsonl", path], check=True,
                         capture_output=True, text=True).stdout
    return [json.loads(line)["ids"] for line in out.splitlines() if line.strip()]


def write_ids(path, sequences):
    header, blobs, offset = {}, [], 0
    for name, ids in sequences.items():
        blob = struct.pack(f"<{len(ids)}q", *ids)
        header[name] = {"dtype": "I64", "shape": [len(ids)], "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    text = json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(blobs))


def read_f32(path):
    data = open(path, "rb").read()
    size = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + size])
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        assert info["dtype"] == "F32", info
        begin, end = info["data_offsets"]
        rows, cols = info["shape"]
        values = struct.unpack(f"<{rows * cols}f", data[8 + size + begin:8 + size + end])
        tensors[name] = [values[r * cols:(r + 1) * cols] for r in range(rows)]
    return tensors


def main():
    dsv3, model, tokenizer, context, workdir = sys.argv[1:6]
    context = int(context)
    rest = sys.argv[6:]
    split = rest.index("--baseline")
    held_out_files, baseline_files = rest[1:split], rest[split + 1:]
    held_out = [open(p, encoding="utf-8").read() for p in held_out_files]
    baseline = [open(p, encoding="utf-8").read() for p in baseline_files]

    config = json.load(open(os.path.join(tokenizer, "tokenizer_config.json")))
    eos_text = config["eos_token"] if isinstance(config["eos_token"], str) else config["eos_token"]["content"]
    vocabulary = json.load(open(os.path.join(tokenizer, "tokenizer.json")))
    eos = next(t["id"] for t in vocabulary["added_tokens"] if t["content"] == eos_text)
    vocab = len(vocabulary["model"]["vocab"]) + sum(
        1 for t in vocabulary["added_tokens"] if t["content"] not in vocabulary["model"]["vocab"])

    counts, total = {}, 0
    for ids in encode(dsv3, tokenizer, baseline, workdir):
        for i in ids:
            counts[i] = counts.get(i, 0) + 1
            total += 1

    # Each document after EOS; windows of `context` tokens every context // 2, each scoring the
    # targets no earlier window scored.
    windows, plan = {}, []
    for d, ids in enumerate(encode(dsv3, tokenizer, held_out, workdir)):
        ids = [eos] + ids
        scored, begin = 1, 0
        while scored < len(ids):
            end = min(begin + context, len(ids))
            name = f"d{d}w{begin}"
            windows["input_ids_" + name] = ids[begin:end]
            plan.append((name, begin, [(t, ids[t]) for t in range(scored, end)]))
            scored, begin = end, begin + context // 2
        plan.append(None)
    write_ids(os.path.join(workdir, "windows.safetensors"), windows)
    subprocess.run([dsv3, "forward", "--model", model, "--input", os.path.join(workdir, "windows.safetensors"),
                    "--output", os.path.join(workdir, "logits.safetensors")], check=True, capture_output=True)
    logits = read_f32(os.path.join(workdir, "logits.safetensors"))

    model_bits = unigram_bits = 0.0
    tokens = 0
    for step in plan:
        if step is None:
            continue
        name, begin, targets = step
        for position, target in targets:
            row = logits["logits_" + name][position - 1 - begin]
            top = max(row)
            log_sum = math.log(sum(math.exp(v - top) for v in row)) + top
            model_bits += (log_sum - row[target]) / math.log(2)
            unigram_bits -= math.log2((counts.get(target, 0) + 1) / (total + vocab))
            tokens += 1
    size = sum(len(t.encode("utf-8")) for t in held_out)
    print(json.dumps({"model_bits_per_byte": model_bits / size, "unigram_bits_per_byte": unigram_bits / size,
                      "held_out_bytes": size, "held_out_tokens": tokens}))


main()
