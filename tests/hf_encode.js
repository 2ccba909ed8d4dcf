// Encodes lines with Hugging Face's `tokenizers` (the native Node binding): the independent
// reference the BPE trainer's output is checked against.
// Usage: NODE_PATH=data/npm/node_modules node tests/hf_encode.js TOKENIZER_JSON REQUEST_JSON
// REQUEST_JSON holds {"lines": [...], "tokens": [...]}; prints {"vocab_size": total size with
// added tokens, "token_ids": id of each of "tokens" (null when absent), "encodings": [{"ids",
// "text": the ids decoded}]} on stdout.
const fs = require('fs');
const { Tokenizer } = require('tokenizers');

async function main() {
  const [tokenizerPath, requestPath] = process.argv.slice(2);
  const tokenizer = Tokenizer.fromFile(tokenizerPath);
  const request = JSON.parse(fs.readFileSync(requestPath, 'utf8'));
  const encodings = [];
  for (const line of request.lines) {
    const encoding = await tokenizer.encode(line, null, { addSpecialTokens: false });
    const ids = encoding.getIds();
    encodings.push({ ids, text: await tokenizer.decode(ids, false) });
  }
  const result = {
    vocab_size: tokenizer.getVocabSize(true),
    token_ids: request.tokens.map((token) => tokenizer.tokenToId(token)),
    encodings,
  };
  process.stdout.write(JSON.stringify(result));
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});
