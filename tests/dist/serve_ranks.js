// `dsv3 serve` under mpirun -np 2 answers as one process does: both servers on 127.0.0.1 on the
// default model (which has the real tokenizer), the same greedy chat and text completions
// (streamed and not, with MTP drafts on the ranks' server) and the same /tokenize answers.
// Usage: node serve_ranks.js MPIRUN DSV3_BINARY MODEL_DIR
// Exits 0 when every check passed, 1 otherwise, and by itself after 150 s.
'use strict';
const assert = require('assert/strict');
const { spawn } = require('child_process');
const fs = require('fs');
const path = require('path');
const { harness, freePort } = require('../node_harness.js');

const [mpirun, binary, model] = process.argv.slice(2);
const { servers, temp, ok, checks } = harness('serve-ranks', 150);

// Starts a server (command, args) and waits (bounded) until /health answers; returns its URL.
async function startServer(command, args) {
  const port = await freePort();
  const logPath = path.join(temp, `serve-${port}.log`);
  const log = fs.openSync(logPath, 'w');
  const server = spawn(command, [...args, '--model', model, '--host', '127.0.0.1', '--port', String(port)],
    { stdio: ['ignore', log, log] });
  servers.push(server);
  const url = `http://127.0.0.1:${port}`;
  for (const deadline = Date.now() + 60000; Date.now() < deadline;) {
    if (server.exitCode !== null) break;
    try {
      if ((await fetch(url + '/health', { signal: AbortSignal.timeout(1000) })).ok) return url;
    } catch {
      // not listening yet
    }
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  throw new Error(`${command} did not start: ` + fs.readFileSync(logPath, 'utf8'));
}

async function post(url, route, body) {
  const response = await fetch(url + route, {
    method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(body),
    signal: AbortSignal.timeout(60000),
  });
  assert.equal(response.status, 200, `${route}: ${await response.clone().text()}`);
  return body.stream ? response.text() : response.json();
}

// The text of a streamed completion, joined from its SSE chunks.
function streamedText(events, field) {
  let text = '';
  for (const line of events.split('\n')) {
    if (!line.startsWith('data: ') || line === 'data: [DONE]') continue;
    const choice = JSON.parse(line.slice(6)).choices[0];
    if (choice) text += field(choice) ?? '';
  }
  return text;
}

// The pid of our mpirun job's rank `rank` (its environment says which rank it is).
function rankProcess(rank) {
  for (const pid of fs.readdirSync('/proc').filter((name) => /^\d+$/.test(name))) {
    try {
      const environ = fs.readFileSync(`/proc/${pid}/environ`, 'utf8').split('\0');
      const cmdline = fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8');
      if (environ.includes(`OMPI_COMM_WORLD_RANK=${rank}`) && cmdline.startsWith(binary) && cmdline.includes(model))
        return pid;
    } catch {
      // gone, or not ours to read
    }
  }
  throw new Error(`no process of rank ${rank}`);
}

// User + system CPU seconds of a process so far (/proc/PID/stat, clock ticks of 1/100 s).
function cpuSeconds(pid) {
  const fields = fs.readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ');
  return (Number(fields[11]) + Number(fields[12])) / 100;
}

async function main() {
  const one = await startServer(binary, ['serve']);
  const ranks = await startServer(mpirun, ['--oversubscribe', '-np', '2', binary, 'serve', '--mtp', '2']);
  ok('dsv3 serve starts under mpirun -np 2');

  const prompts = ['The state of the union', 'We the people', 'Congress shall'];
  for (const prompt of prompts) {
    const request = { prompt, max_tokens: 40, temperature: 0 };
    const [a, b] = [await post(one, '/v1/completions', request), await post(ranks, '/v1/completions', request)];
    assert.equal(b.choices[0].text, a.choices[0].text);
    assert.deepEqual(b.usage.completion_tokens, a.usage.completion_tokens);
    assert.ok(a.choices[0].text.length > 0);
  }
  ok(`the same greedy text completions for ${prompts.length} prompts`);

  const chat = { messages: [{ role: 'user', content: 'What did the president say?' }], max_tokens: 40, temperature: 0 };
  const [a, b] = [await post(one, '/v1/chat/completions', chat), await post(ranks, '/v1/chat/completions', chat)];
  assert.equal(b.choices[0].message.content, a.choices[0].message.content);
  const streamed = await post(ranks, '/v1/chat/completions', { ...chat, stream: true });
  assert.equal(streamedText(streamed, (c) => c.delta && c.delta.content), a.choices[0].message.content);
  ok('the same greedy chat completion, streamed and not');

  const [ta, tb] = [await post(one, '/tokenize', { prompt: prompts[0] }), await post(ranks, '/tokenize', { prompt: prompts[0] })];
  assert.deepEqual(tb, ta);
  ok('the same /tokenize answer');

  // Idle, rank 1 waits for rank 0's next step asleep: a core spinning in MPI would use ~3 s of CPU here.
  const follower = rankProcess(1);
  const before = cpuSeconds(follower);
  await new Promise((resolve) => setTimeout(resolve, 3000));
  const used = cpuSeconds(follower) - before;
  assert.ok(used < 0.5, `rank 1 used ${used.toFixed(2)} s of CPU in 3 s while the server was idle`);
  ok(`an idle rank 1 sleeps (${used.toFixed(3)} s of CPU in 3 s)`);
  console.log(`serve_ranks: all ${checks()} checks passed`);
}

main().then(() => process.exit(0), (error) => {
  console.error('FAILED:', error.stack || error);
  process.exit(1);
});
