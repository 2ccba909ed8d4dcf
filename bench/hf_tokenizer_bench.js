// Hugging Face's tokenizers (the native Node binding, Rust inside), single-threaded: the baseline
// that build/bench_tokenizer runs and compares dsv3 against on the same machine in the same run.
// Usage: node bench/hf_tokenizer_bench.js TOKENIZER_JSON DOCUMENTS_JSON IDS_OUT [REPEATS]
// DOCUMENTS_JSON is an array of strings, encoded one by one (no special tokens). Prints one JSON
// line {"mb_per_s", "seconds", "tokens"}; writes all ids, in order, as little-endian int32.
process.env.RAYON_NUM_THREADS = '1';
process.env.TOKENIZERS_PARALLELISM = 'false';

const fs = require('fs');
const path = require('path');
const { Tokenizer } = require(path.join(__dirname, '..', 'data', 'npm', 'node_modules', 'tokenizers'));

async function main() {
  const [tokenizerPath, documentsPath, idsPath, repeatsArg] = process.argv.slice(2);
  if (!tokenizerPath || !documentsPath || !idsPath) {
    console.error('usage: node bench/hf_tokenizer_bench.js TOKENIZER_JSON DOCUMENTS_JSON IDS_OUT [REPEATS]');
    process.exit(2);
  }
  const repeats = Number(repeatsArg || 3);
  const tokenizer = Tokenizer.fromFile(tokenizerPath);
  const documents = JSON.parse(fs.readFileSync(documentsPath, 'utf8'));
  const bytes = documents.reduce((sum, document) => sum + Buffer.byteLength(document, 'utf8'), 0);
  let best = Infinity;
  let ids = [];
  for (let r = 0; r < repeats; ++r) {
    const encodings = [];
    // Process CPU time (all threads), not wall time: the machine is shared, and with one Rayon
    // thread the CPU time is the work done.
    const start = process.cpuUsage();
    for (const document of documents) encodings.push(await tokenizer.encode(document, null, { addSpecialTokens: false }));
    const used = process.cpuUsage(start);
    const seconds = (used.user + used.system) / 1e6;
    best = Math.min(best, seconds);
    ids = encodings.flatMap((encoding) => encoding.getIds());
  }
  fs.writeFileSync(idsPath, Buffer.from(Int32Array.from(ids).buffer));
  console.log(JSON.stringify({ mb_per_s: bytes / 1e6 / best, seconds: best, tokens: ids.length }));
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});
