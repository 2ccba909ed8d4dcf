// Trains Hugging Face's own BpeTrainer (the `tokenizers` Node binding, default settings: vocab
// 30000, min_frequency 0) with the normalizer and pre-tokenizer of a reference tokenizer.json, and
// prints its merges as a JSON array of "left right" strings. The BPE trainer's merges must be a
// prefix of these (greedy BPE: the first merges do not depend on the target size).
// Usage: NODE_PATH=data/npm/node_modules node tests/hf_train.js REFERENCE_TOKENIZER_JSON CORPUS...
const fs = require('fs');
const { Tokenizer } = require('tokenizers');

const [referencePath, ...corpus] = process.argv.slice(2);
const reference = JSON.parse(fs.readFileSync(referencePath, 'utf8'));
const empty = {
  version: '1.0', truncation: null, padding: null, added_tokens: [],
  normalizer: reference.normalizer, pre_tokenizer: reference.pre_tokenizer, post_processor: null,
  decoder: reference.decoder,
  model: { type: 'BPE', dropout: null, unk_token: null, continuing_subword_prefix: null,
           end_of_word_suffix: null, fuse_unk: false, byte_fallback: false, vocab: {}, merges: [] },
};
const tokenizer = Tokenizer.fromString(JSON.stringify(empty));
tokenizer.train(corpus);
const out = `${fs.mkdtempSync('/tmp/dsv3-hf-train-')}/tokenizer.json`;
tokenizer.save(out);
const merges = JSON.parse(fs.readFileSync(out, 'utf8')).model.merges;
fs.rmSync(out.replace(/\/tokenizer\.json$/, ''), { recursive: true, force: true });
process.stdout.write(JSON.stringify(merges.map((m) => (Array.isArray(m) ? m.join(' ') : m))));
