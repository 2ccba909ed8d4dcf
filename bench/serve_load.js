// Load benchmark for `dsv3 serve` (not a test): streamed completions at several concurrencies,
// each client sending its next request as soon as the last one ends. Reports requests/s,
// aggregate generated tokens/s, time to first token and inter-token latency (p50/p99), and the
// throughput ratio of the highest concurrency to 1.
//
//   build/dsv3 serve --model /tmp/bench-1b --max-batch 16 --port 8000 &
//   node bench/serve_load.js --url http://127.0.0.1:8000 --concurrency 1,4,16 --requests 32 \
//        --prompt-tokens 64 --max-tokens 64
'use strict';

const options = { url: 'http://127.0.0.1:8000', concurrency: '1,4,16', requests: 32, 'prompt-tokens': 64, 'max-tokens': 64,
  'api-key': 'none' };
const argv = process.argv.slice(2);
for (let i = 0; i < argv.length; i += 2) {
  const key = argv[i].replace(/^--/, '');
  if (!(key in options)) { console.error(`unknown option ${argv[i]}`); process.exit(2); }
  options[key] = argv[i + 1];
}
const levels = String(options.concurrency).split(',').map(Number);
const requests = Number(options.requests);
const maxTokens = Number(options['max-tokens']);
// A prompt of about the asked length, as token ids (so its length is exact), different per request.
const promptIds = (seed) => Array.from({ length: Number(options['prompt-tokens']) }, (_, i) => 1000 + ((seed * 7919 + i * 104729) % 90000));

function percentile(values, p) {
  if (!values.length) return NaN;
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
}

async function one(seed) {
  const started = performance.now();
  const response = await fetch(`${options.url}/v1/completions`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', Authorization: `Bearer ${options['api-key']}` },
    body: JSON.stringify({ prompt: promptIds(seed), max_tokens: maxTokens, temperature: 0, stream: true,
      stream_options: { include_usage: true }, ignore_eos: true }),
  });
  if (response.status !== 200) throw new Error(`status ${response.status}: ${await response.text()}`);
  const decoder = new TextDecoder();
  let buffer = '', first = null, last = null, tokens = 0;
  const gaps = [];
  for await (const bytes of response.body) {
    buffer += decoder.decode(bytes, { stream: true });
    let end;
    while ((end = buffer.indexOf('\n\n')) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      if (!event.startsWith('data: ') || event === 'data: [DONE]') continue;
      const chunk = JSON.parse(event.slice(6));
      if (chunk.usage) tokens = chunk.usage.completion_tokens;
      if (chunk.choices.length && chunk.choices[0].text) {
        const now = performance.now();
        if (first === null) first = now; else gaps.push((now - last) / 1000);
        last = now;
      }
    }
  }
  return { ttft: ((first ?? performance.now()) - started) / 1000, gaps, tokens };
}

async function level(concurrency) {
  let next = 0;
  const results = [];
  const started = performance.now();
  await Promise.all(Array.from({ length: concurrency }, async () => {
    while (next < requests) results.push(await one(next++));
  }));
  const seconds = (performance.now() - started) / 1000;
  const tokens = results.reduce((sum, r) => sum + r.tokens, 0);
  const ttft = results.map((r) => r.ttft);
  const gaps = results.flatMap((r) => r.gaps);
  return { concurrency, seconds, rps: results.length / seconds, tps: tokens / seconds, ttft50: percentile(ttft, 50),
    ttft99: percentile(ttft, 99), itl50: percentile(gaps, 50), itl99: percentile(gaps, 99) };
}

(async () => {
  const models = await (await fetch(`${options.url}/v1/models`, { headers: { Authorization: `Bearer ${options['api-key']}` } })).json();
  console.log(`model ${models.data[0].id}; ${requests} requests per level, prompt ${options['prompt-tokens']} tokens, ` +
    `${maxTokens} generated (greedy, streamed)`);
  console.log('concurrency  requests/s  tokens/s  TTFT p50  TTFT p99  ITL p50  ITL p99');
  const rows = [];
  for (const c of levels) {
    const r = await level(c);
    rows.push(r);
    const ms = (s) => `${(s * 1000).toFixed(1)} ms`.padStart(9);
    console.log(`${String(c).padStart(11)}  ${r.rps.toFixed(2).padStart(10)}  ${r.tps.toFixed(1).padStart(8)} ${ms(r.ttft50)} ${ms(r.ttft99)} ${ms(r.itl50)} ${ms(r.itl99)}`);
  }
  if (rows.length > 1) console.log(`aggregate tokens/s, concurrency ${rows.at(-1).concurrency} vs ${rows[0].concurrency}: ${(rows.at(-1).tps / rows[0].tps).toFixed(2)}x`);
})().catch((e) => { console.error(e); process.exit(1); });
