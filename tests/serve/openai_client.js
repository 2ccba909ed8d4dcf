// Drives a running `dsv3 serve` with the official openai npm package, as a user's program would.
// Usage: node openai_client.js BASE_URL MODEL EXPECTED_JSON
//   EXPECTED_JSON: {"prompt": text, "max_tokens": n, "greedy_text": what `dsv3 generate` printed,
//                   "mtp_url": the base URL of the same server run with --mtp "mtp_drafts"}
// Prints one line per check; exits 1 on the first failure (and by itself after 100 s).
'use strict';
const fs = require('fs');
const path = require('path');
const assert = require('assert/strict');

const npm = process.env.DSV3_NPM_DIR || path.join(__dirname, '../../data/npm');
const openai = require(path.join(npm, 'node_modules/openai'));
const OpenAI = openai.OpenAI || openai.default;

const [baseURL, model, expectedFile] = process.argv.slice(2);
const expected = JSON.parse(fs.readFileSync(expectedFile, 'utf8'));
const client = new OpenAI({ baseURL, apiKey: process.env.DSV3_API_KEY || 'none', timeout: 60000, maxRetries: 0 });
setTimeout(() => { console.error('timed out'); process.exit(1); }, 100000).unref();

let checks = 0;
function ok(name) { ++checks; console.log(`ok ${checks} ${name}`); }

async function tokenize(body) {
  const response = await fetch(baseURL.replace(/\/v1$/, '') + '/tokenize', {
    method: 'POST', headers: { 'Content-Type': 'application/json', Authorization: `Bearer ${process.env.DSV3_API_KEY || 'none'}` },
    body: JSON.stringify(body),
  });
  assert.equal(response.status, 200);
  return response.json();
}

function checkUsage(usage, promptTokens, maxTokens) {
  assert.equal(usage.prompt_tokens, promptTokens);
  assert.ok(usage.completion_tokens >= 1 && usage.completion_tokens <= maxTokens, JSON.stringify(usage));
  assert.equal(usage.total_tokens, usage.prompt_tokens + usage.completion_tokens);
  assert.equal(usage.prompt_cache_hit_tokens, 0);
  assert.equal(usage.prompt_cache_miss_tokens, promptTokens);
  assert.equal(usage.prompt_tokens_details.cached_tokens, 0);
  assert.equal(typeof usage.completion_tokens_details.reasoning_tokens, 'number');
}

// usage.speculation, the request's MTP drafts over its `choices`: every verification step drafts
// k tokens and yields 1 to 1 + accepted of them, after each choice's first token (from the prompt).
function checkSpeculation(usage, k, choices) {
  const { drafted, accepted } = usage.speculation;
  assert.ok(drafted > 0 && drafted % k === 0, JSON.stringify(usage));
  assert.ok(accepted >= 0 && accepted <= drafted, JSON.stringify(usage));
  const steps = drafted / k;
  assert.ok(usage.completion_tokens >= choices + steps, JSON.stringify(usage));
  assert.ok(usage.completion_tokens <= choices + steps + accepted, JSON.stringify(usage));
}

async function streamChat(body) {
  const stream = await client.chat.completions.create({ ...body, stream: true, stream_options: { include_usage: true } });
  const texts = [], reasons = [], logprobs = [], reasoning = [];
  let usage = null, roleSeen = false;
  for await (const chunk of stream) {
    if (chunk.usage) usage = chunk.usage;
    for (const choice of chunk.choices) {
      const i = choice.index;
      texts[i] = (texts[i] || '') + (choice.delta.content || '');
      reasoning[i] = (reasoning[i] || '') + (choice.delta.reasoning_content || '');
      if (choice.delta.role === 'assistant') roleSeen = true;
      if (choice.finish_reason) reasons[i] = choice.finish_reason;
      if (choice.logprobs && choice.logprobs.content) logprobs[i] = (logprobs[i] || []).concat(choice.logprobs.content);
    }
  }
  assert.ok(roleSeen, 'the first chunk carries the role');
  return { texts, reasons, usage, logprobs, reasoning };
}

async function streamCompletion(body) {
  const stream = await client.completions.create({ ...body, stream: true });
  const texts = [], reasons = [];
  for await (const chunk of stream) {
    for (const choice of chunk.choices) {
      texts[choice.index] = (texts[choice.index] || '') + choice.text;
      if (choice.finish_reason) reasons[choice.index] = choice.finish_reason;
    }
  }
  return { texts, reasons };
}

async function main() {
  const models = await client.models.list();
  assert.deepEqual(models.data.map((m) => m.id), [model]);
  ok('models.list names the served model');

  // Completions, greedy: the same text as `dsv3 generate` on the same prompt.
  const greedy = { model, prompt: expected.prompt, max_tokens: expected.max_tokens, temperature: 0 };
  const whole = await client.completions.create(greedy);
  assert.equal(whole.object, 'text_completion');
  assert.equal(whole.choices[0].text, expected.greedy_text);
  const promptIds = (await tokenize({ prompt: expected.prompt })).tokens;
  checkUsage(whole.usage, promptIds.length, expected.max_tokens);
  ok('greedy completion equals dsv3 generate');
  const streamed = await streamCompletion(greedy);
  assert.equal(streamed.texts[0], whole.choices[0].text);
  assert.equal(streamed.reasons[0], whole.choices[0].finish_reason);
  ok('streamed completion equals the whole one');
  const byIds = await client.completions.create({ ...greedy, prompt: promptIds });
  assert.equal(byIds.choices[0].text, whole.choices[0].text);
  ok('a prompt of token ids gives the same text');
  const two = await client.completions.create({ ...greedy, prompt: [expected.prompt, 'Another prompt, quite different'] });
  assert.deepEqual(two.choices.map((c) => c.index), [0, 1]);
  assert.equal(two.choices[0].text, whole.choices[0].text);
  ok('a list of prompts gives one choice each, in order');

  // Stop strings: the text ends right before the first occurrence.
  const text = whole.choices[0].text;
  const chars = Array.from(text);
  const middle = Math.floor(chars.length / 2);
  const stop = chars.slice(middle, middle + 2).join('');
  assert.ok(stop.length > 0 && !stop.includes('\ufffd'), `a usable stop string in ${JSON.stringify(text)}`);
  const stopped = await client.completions.create({ ...greedy, stop: [stop, 'never-seen-stop'] });
  assert.equal(stopped.choices[0].text, text.slice(0, text.indexOf(stop)));
  assert.equal(stopped.choices[0].finish_reason, 'stop');
  const stoppedStream = await streamCompletion({ ...greedy, stop });
  assert.equal(stoppedStream.texts[0] || '', stopped.choices[0].text);
  ok('stop strings end the text before them, streaming or not');

  // Chat, greedy: streamed equals whole, usage exact.
  const chatBody = {
    model, temperature: 0, max_tokens: 20,
    messages: [{ role: 'system', content: 'You are terse.' }, { role: 'user', content: 'Say something.' }],
  };
  const chat = await client.chat.completions.create(chatBody);
  assert.equal(chat.object, 'chat.completion');
  assert.equal(chat.choices[0].message.role, 'assistant');
  assert.equal(typeof chat.choices[0].message.content, 'string');
  const chatPrompt = (await tokenize({ messages: chatBody.messages })).count;
  checkUsage(chat.usage, chatPrompt, 20);
  ok('chat completion with exact usage');
  const chatStream = await streamChat(chatBody);
  assert.equal(chatStream.texts[0], chat.choices[0].message.content);
  assert.equal(chatStream.reasons[0], chat.choices[0].finish_reason);
  assert.deepEqual(chatStream.usage, chat.usage);
  ok('streamed chat equals the whole one, usage included');
  const noV1 = new OpenAI({ baseURL: baseURL.replace(/\/v1$/, ''), apiKey: process.env.DSV3_API_KEY || 'none', maxRetries: 0 });
  const deepseekStyle = await noV1.chat.completions.create(chatBody);
  assert.equal(deepseekStyle.choices[0].message.content, chat.choices[0].message.content);
  ok('DeepSeek base URL (no /v1) serves the same');

  // n > 1 and seeds.
  const sampled = { ...chatBody, temperature: 1.0, n: 3, seed: 1234 };
  const a = await client.chat.completions.create(sampled);
  const b = await client.chat.completions.create(sampled);
  assert.deepEqual(a.choices.map((c) => c.index), [0, 1, 2]);
  assert.deepEqual(a.choices.map((c) => c.message.content), b.choices.map((c) => c.message.content));
  assert.ok(new Set(a.choices.map((c) => c.message.content)).size >= 2, 'n choices differ');
  assert.equal(a.usage.prompt_tokens, chatPrompt);
  const c = await client.chat.completions.create({ ...sampled, seed: 99 });
  assert.notDeepEqual(c.choices.map((x) => x.message.content), a.choices.map((x) => x.message.content));
  const streamedN = await streamChat(sampled);
  assert.deepEqual(streamedN.texts, a.choices.map((x) => x.message.content));
  ok('n = 3: distinct choices; the same seed gives the same text, streamed too; another seed does not');
  const completionSeeded = { model, prompt: 'Once upon a time', max_tokens: 10, temperature: 0.8, top_p: 0.9, top_k: 50, seed: 5 };
  const s1 = await client.completions.create(completionSeeded);
  const s2 = await client.completions.create(completionSeeded);
  assert.equal(s1.choices[0].text, s2.choices[0].text);
  ok('completions: the same seed gives the same text');

  // Log-probabilities.
  const withLogprobs = await client.chat.completions.create({ ...chatBody, logprobs: true, top_logprobs: 3 });
  const entries = withLogprobs.choices[0].logprobs.content;
  const generated = withLogprobs.usage.completion_tokens;
  assert.ok(entries.length === generated || (entries.length === generated - 1 && withLogprobs.choices[0].finish_reason === 'stop'));
  for (const entry of entries) {
    assert.ok(entry.logprob <= 0);
    assert.equal(entry.top_logprobs.length, 3);
    for (let i = 1; i < 3; ++i) assert.ok(entry.top_logprobs[i - 1].logprob >= entry.top_logprobs[i].logprob);
    assert.deepEqual(entry.bytes, Array.from(Buffer.from(entry.token, 'utf8')));
  }
  assert.equal(withLogprobs.choices[0].message.content, chat.choices[0].message.content);
  const streamedLogprobs = await streamChat({ ...chatBody, logprobs: true, top_logprobs: 3 });
  assert.deepEqual(streamedLogprobs.logprobs[0], entries);
  ok('chat logprobs: one entry per token, top 3 sorted, the same streamed');
  const completionLogprobs = await client.completions.create({ ...greedy, logprobs: 2 });
  const lp = completionLogprobs.choices[0].logprobs;
  assert.equal(lp.tokens.length, lp.token_logprobs.length);
  assert.equal(lp.tokens.length, lp.top_logprobs.length);
  assert.ok(lp.tokens.length >= 1);
  for (let i = 1; i < lp.text_offset.length; ++i) assert.ok(lp.text_offset[i] >= lp.text_offset[i - 1]);
  for (const top of lp.top_logprobs) assert.ok(Object.keys(top).length >= 1 && Object.keys(top).length <= 2);
  ok('completion logprobs: tokens, token_logprobs, top_logprobs, text_offset');

  // Tool definitions are accepted (passed to the chat template).
  const tools = [{ type: 'function', function: { name: 'get_weather', description: 'Weather in a city',
    parameters: { type: 'object', properties: { city: { type: 'string' } }, required: ['city'] } } }];
  const withTools = await client.chat.completions.create({ ...chatBody, tools });
  assert.ok(['stop', 'length', 'tool_calls'].includes(withTools.choices[0].finish_reason));
  ok('tool definitions are accepted');

  // A named tool_choice: the reply is that function's call (a random model would not call it),
  // whole or streamed; the SDK's own ChatCompletionStream puts the streamed deltas back together.
  const forcedBody = { ...chatBody, max_tokens: 8, tools, tool_choice: { type: 'function', function: { name: 'get_weather' } } };
  const forced = (await client.chat.completions.create(forcedBody)).choices[0];
  assert.ok(['tool_calls', 'length'].includes(forced.finish_reason), forced.finish_reason);
  assert.ok(forced.message.tool_calls.length >= 1, JSON.stringify(forced.message));
  const call = forced.message.tool_calls[0];
  assert.match(call.id, /^call_[0-9a-f]{16}$/);
  assert.equal(call.type, 'function');
  assert.equal(call.function.name, 'get_weather');
  assert.equal(typeof call.function.arguments, 'string');
  const assembled = (await client.chat.completions.stream(forcedBody).finalChatCompletion()).choices[0];
  assert.equal(assembled.finish_reason, forced.finish_reason);
  assert.equal(assembled.message.content || '', forced.message.content || '');
  assert.deepEqual(assembled.message.tool_calls.map((c) => [c.type, c.function]),
    forced.message.tool_calls.map((c) => [c.type, c.function]));
  for (const c of assembled.message.tool_calls) assert.match(c.id, /^call_[0-9a-f]{16}$/);
  ok('a named tool_choice makes the reply that function\'s call, streamed (assembled by the SDK) or not');

  // An earlier tool call and its result go back through the template.
  const history = await client.chat.completions.create({ ...chatBody, tools, messages: [
    { role: 'user', content: 'Weather in Paris?' },
    { role: 'assistant', content: null, tool_calls: [{ id: 'call_1', type: 'function',
      function: { name: 'get_weather', arguments: '{"city":"Paris"}' } }] },
    { role: 'tool', tool_call_id: 'call_1', content: '{"celsius": 21}' },
  ] });
  const historyPrompt = (await tokenize({ messages: [
    { role: 'user', content: 'Weather in Paris?' },
    { role: 'assistant', content: null, tool_calls: [{ id: 'call_1', type: 'function',
      function: { name: 'get_weather', arguments: '{"city":"Paris"}' } }] },
    { role: 'tool', tool_call_id: 'call_1', content: '{"celsius": 21}' }] })).tokens;
  assert.equal(history.usage.prompt_tokens, historyPrompt.length);
  const toolTokens = (await tokenize({ prompt: '<｜tool▁calls▁begin｜><｜tool▁outputs▁begin｜>', add_special_tokens: false })).tokens;
  assert.equal(toolTokens.length, 2);
  for (const id of toolTokens) assert.ok(historyPrompt.includes(id), 'the tool call and its output are in the prompt');
  ok('tool calls and tool results in the history are rendered by the template');

  // Chat prefix completion: the last assistant message is continued; the same as completing the
  // rendered prompt (prefix included) as token ids.
  const prefixMessages = [{ role: 'user', content: 'Tell a story.' }, { role: 'assistant', content: 'Once upon a', prefix: true }];
  const prefixed = await client.chat.completions.create({ ...chatBody, messages: prefixMessages, max_tokens: 10 });
  const prefixIds = (await tokenize({ messages: prefixMessages })).tokens;
  const answerIds = (await tokenize({ messages: prefixMessages.slice(0, 1) })).tokens;
  const prefixText = (await tokenize({ prompt: 'Once upon a', add_special_tokens: false })).tokens;
  assert.deepEqual(prefixIds, answerIds.concat(prefixText));
  const asCompletion = await client.completions.create({ model, prompt: prefixIds, max_tokens: 10, temperature: 0 });
  assert.equal(prefixed.choices[0].message.content, asCompletion.choices[0].text);
  assert.equal(prefixed.usage.prompt_tokens, prefixIds.length);
  ok('chat prefix completion continues the assistant message');

  // R1-style thinking: a reply that starts inside <think> (here the prefix opens it) goes to
  // reasoning_content, counted as reasoning tokens, streamed as delta.reasoning_content.
  const thinkingBody = { ...chatBody, max_tokens: 6, messages: [{ role: 'user', content: 'Think first.' },
    { role: 'assistant', content: '<think>\n', prefix: true }] };
  const thought = await client.chat.completions.create(thinkingBody);
  const reasoningText = thought.choices[0].message.reasoning_content;
  assert.ok(typeof reasoningText === 'string' && reasoningText.length > 0, JSON.stringify(thought.choices[0].message));
  assert.equal(thought.choices[0].message.content, '');
  assert.equal(thought.usage.completion_tokens_details.reasoning_tokens, thought.usage.completion_tokens);
  const thoughtStream = await streamChat(thinkingBody);
  assert.equal(thoughtStream.reasoning[0], reasoningText);
  assert.equal(thoughtStream.texts[0], '');
  ok('thinking goes to reasoning_content, streamed too, counted as reasoning tokens');

  // Fill in the middle: <｜fim▁begin｜>prefix<｜fim▁hole｜>suffix<｜fim▁end｜> after BOS.
  const fim = await client.completions.create({ model, prompt: 'def add(a, b):\n', suffix: '\n    return c\n', max_tokens: 8, temperature: 0 });
  const marker = async (text) => (await tokenize({ prompt: text, add_special_tokens: false })).tokens;
  const fimIds = [...(await tokenize({ prompt: '' })).tokens, ...(await marker('<｜fim▁begin｜>')),
    ...(await marker('def add(a, b):\n')), ...(await marker('<｜fim▁hole｜>')), ...(await marker('\n    return c\n')),
    ...(await marker('<｜fim▁end｜>'))];
  const fimByIds = await client.completions.create({ model, prompt: fimIds, max_tokens: 8, temperature: 0 });
  assert.equal(fim.choices[0].text, fimByIds.choices[0].text);
  assert.equal(fim.usage.prompt_tokens, fimIds.length);
  ok('FIM builds the prompt from the fim tokens');

  // Errors come back as the client's typed errors, naming the parameter.
  try {
    await client.chat.completions.create({ ...chatBody, temperature: 7 });
    assert.fail('temperature 7 was accepted');
  } catch (e) {
    assert.ok(e instanceof OpenAI.BadRequestError, String(e));
    assert.equal(e.status, 400);
    assert.equal(e.param, 'temperature');
  }
  ok('a bad parameter is a BadRequestError naming it');

  // MTP on: usage.speculation counts the request's drafts (an extension; absent without MTP), and
  // greedy speculation is lossless.
  assert.equal(chat.usage.speculation, undefined);
  const speculating = new OpenAI({ baseURL: expected.mtp_url, apiKey: process.env.DSV3_API_KEY || 'none', maxRetries: 0 });
  const k = expected.mtp_drafts;
  const drafted = await speculating.chat.completions.create(chatBody);
  assert.equal(drafted.choices[0].message.content, chat.choices[0].message.content);
  checkSpeculation(drafted.usage, k, 1);
  const streamedDrafts = await (async () => {
    const stream = await speculating.chat.completions.create({ ...chatBody, stream: true, stream_options: { include_usage: true } });
    let usage = null;
    for await (const chunk of stream) if (chunk.usage) usage = chunk.usage;
    return usage;
  })();
  assert.deepEqual(streamedDrafts, drafted.usage);
  const draftedN = await speculating.chat.completions.create({ ...sampled, max_tokens: 30 });
  checkSpeculation(draftedN.usage, k, 3);
  ok(`usage.speculation with --mtp ${k}: ${JSON.stringify(drafted.usage.speculation)}, the same streamed; n = 3 summed`);
  console.log(`all ${checks} checks passed`);
}

main().catch((e) => { console.error('FAILED:', e && e.stack ? e.stack : e); process.exit(1); });
