// The chat page of `dsv3 serve`, end to end in headless Chromium (Debian's chromium, driven by
// playwright-core): servers on 127.0.0.1 on a small `dsv3 init` model with the real DeepSeek-V3
// tokenizer; the page's streamed greedy reply equals the API's; Stop cancels the sequence (as
// /metrics counts it); keyboard only; a 360 px window; the API-key, 429 and server-down paths.
// Usage: node chat_page.js DSV3_BINARY SOURCE_DIR DATA_DIR SCREENSHOT_DIR
// Exits 0 when every check passed, 77 (skipped) without chromium or playwright-core, 1 otherwise,
// and by itself after 240 s.
'use strict';
const assert = require('assert/strict');
const { execFileSync, spawn } = require('child_process');
const fs = require('fs');
const path = require('path');
const { harness, freePort } = require('../node_harness.js');

const [binary, sourceDir, dataDir, screenshotDir] = process.argv.slice(2);
const chromium = '/usr/bin/chromium';
const playwrightPath = path.join(dataDir, 'npm/node_modules/playwright-core');
if (!fs.existsSync(chromium) || !fs.existsSync(playwrightPath)) {
  console.log(`SKIPPED: needs ${chromium} (apt chromium) and ${playwrightPath} (npm playwright-core): run scripts/setup.sh`);
  process.exit(77);
}
const { chromium: playwright } = require(playwrightPath);

const { servers, temp, ok, checks } = harness('page', 240);

// Starts `dsv3 serve` and waits (bounded) until /health answers; returns its base URL.
async function startServer(model, extra) {
  const port = await freePort();
  const log = fs.openSync(path.join(temp, `serve-${port}.log`), 'w');
  const server = spawn(binary, ['serve', '--model', model, '--host', '127.0.0.1', '--port', String(port),
    '--served-model-name', 'small-dsv3', ...extra], { stdio: ['ignore', log, log] });
  servers.push(server);
  const url = `http://127.0.0.1:${port}`;
  for (const deadline = Date.now() + 30000; Date.now() < deadline;) {
    if (server.exitCode !== null) break;
    try {
      if ((await fetch(url + '/health', { signal: AbortSignal.timeout(1000) })).ok) return { url, server };
    } catch {
      // not listening yet
    }
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  throw new Error('dsv3 serve did not start: ' + fs.readFileSync(path.join(temp, `serve-${port}.log`), 'utf8'));
}

async function metric(url, name) {
  const text = await (await fetch(url + '/metrics', { signal: AbortSignal.timeout(5000) })).text();
  const match = text.match(new RegExp(`^${name} (\\d+)$`, 'm'));
  return match ? Number(match[1]) : -1;
}

// The page's last reply once it has ended (done, stopped or failed).
async function lastReply(page) {
  const reply = page.locator('.message.assistant').last();
  await page.waitForFunction(() => {
    const replies = document.querySelectorAll('.message.assistant');
    return replies.length && replies[replies.length - 1].dataset.state !== 'streaming';
  }, null, { timeout: 60000 });
  return {
    state: await reply.getAttribute('data-state'),
    content: await reply.locator('.content').textContent(),
    stats: await reply.locator('.stats').textContent(),
  };
}

async function checkReplyAndStop(browser, url) {
  const page = await browser.newPage({ viewport: { width: 1000, height: 760 } });
  await page.goto(url + '/');
  await page.locator('#model').filter({ hasText: 'small-dsv3' }).waitFor({ timeout: 10000 });
  ok('GET / serves the page, which names the served model');

  // Keyboard alone: Tab reaches the labelled controls, and the focus is drawn.
  const order = [];
  for (let i = 0; i < 8; ++i) {
    await page.keyboard.press('Tab');
    order.push(await page.evaluate(() => document.activeElement.id));
    if (order.at(-1) === 'prompt') break;
  }
  assert.deepEqual(order, ['temperature', 'max-tokens', 'new-chat', 'prompt'], order.join(','));
  const outline = await page.evaluate(() => getComputedStyle(document.activeElement).outlineStyle);
  assert.notEqual(outline, 'none');
  for (const id of ['temperature', 'max-tokens', 'prompt', 'api-key'])
    assert.ok(await page.locator(`#${id}`).evaluate((e) => e.labels.length > 0), `#${id} has a label`);
  ok('Tab reaches temperature, max tokens, new chat and the message box, with a visible focus; labels on all');

  // Greedy: the streamed reply equals the API's reply to the same request.
  const text = 'Write a line about the sea.';
  await page.keyboard.press('Shift+Tab');
  await page.keyboard.press('Shift+Tab');
  await page.keyboard.press('Shift+Tab');
  await page.keyboard.press('Control+A');
  await page.keyboard.type('0');
  await page.keyboard.press('Tab');
  await page.keyboard.press('Control+A');
  await page.keyboard.type('24');
  await page.keyboard.press('Tab');
  await page.keyboard.press('Tab');
  await page.keyboard.type('A first line');
  await page.keyboard.press('Shift+Enter');
  assert.equal(await page.locator('#prompt').inputValue(), 'A first line\n');
  await page.keyboard.press('Control+A');
  await page.keyboard.type(text);
  await page.keyboard.press('Enter');
  const reply = await lastReply(page);
  assert.equal(reply.state, 'done');
  const direct = await (await fetch(url + '/v1/chat/completions', {
    method: 'POST', headers: { 'Content-Type': 'application/json' }, signal: AbortSignal.timeout(60000),
    body: JSON.stringify({ messages: [{ role: 'user', content: text }], temperature: 0, max_tokens: 24 }),
  })).json();
  assert.ok(direct.choices[0].message.content.length > 0);
  assert.equal(reply.content, direct.choices[0].message.content);
  const { drafted, accepted } = direct.usage.speculation;
  assert.match(reply.stats, new RegExp(`^${direct.usage.completion_tokens} tokens in [0-9.]+ s · [0-9.]+ tokens/s · `));
  assert.ok(reply.stats.includes(`MTP accepted ${accepted} of ${drafted} drafts`), reply.stats);
  assert.equal(await page.locator('.message.user').last().textContent(), text);
  ok(`keyboard only: the streamed reply equals the API's greedy reply (${direct.usage.completion_tokens} tokens); ` +
     `stats: ${reply.stats}`);
  await page.screenshot({ path: path.join(screenshotDir, 'chat-page.png') });

  // Stop: a long reply is cut off, and the server ends its sequence.
  const cancelledBefore = await metric(url, 'dsv3_requests_cancelled_total');
  const sequencesBefore = await metric(url, 'dsv3_sequences_cancelled_total');
  await page.locator('#max-tokens').fill('1800');
  await page.locator('#temperature').fill('1');
  await page.locator('#prompt').fill('Tell a very long story.');
  await page.locator('#prompt').press('Enter');
  const streaming = page.locator('.message.assistant[data-state="streaming"] .content');
  await streaming.filter({ hasText: /\S/ }).waitFor({ timeout: 30000 });
  await page.locator('#stop').click();
  const stopped = await lastReply(page);
  assert.equal(stopped.state, 'stopped');
  let cancelled = -1, sequences = -1;
  for (const deadline = Date.now() + 10000; Date.now() < deadline; await page.waitForTimeout(100)) {
    cancelled = await metric(url, 'dsv3_requests_cancelled_total');
    sequences = await metric(url, 'dsv3_sequences_cancelled_total');
    if (cancelled > cancelledBefore && sequences > sequencesBefore) break;
  }
  assert.equal(cancelled, cancelledBefore + 1);
  assert.equal(sequences, sequencesBefore + 1);
  assert.equal(await metric(url, 'dsv3_running_sequences'), 0);
  assert.ok(await page.locator('#send').isEnabled());
  assert.ok(await page.locator('#stop').isDisabled());
  ok(`Stop cuts the reply off after ${Array.from(stopped.content).length} characters; /metrics counts the request ` +
     'and its sequence cancelled');

  // Esc stops too, from the keyboard.
  await page.locator('#prompt').fill('Another long one.');
  await page.locator('#prompt').press('Enter');
  await streaming.filter({ hasText: /\S/ }).waitFor({ timeout: 30000 });
  await page.keyboard.press('Escape');
  assert.equal((await lastReply(page)).state, 'stopped');
  for (const deadline = Date.now() + 10000; Date.now() < deadline; await page.waitForTimeout(100))
    if ((cancelled = await metric(url, 'dsv3_requests_cancelled_total')) > cancelledBefore + 1) break;
  assert.equal(cancelled, cancelledBefore + 2);
  ok('Esc stops a reply as well');

  // A narrow window: nothing scrolls sideways, the controls stay on screen.
  await page.setViewportSize({ width: 360, height: 740 });
  const width = await page.evaluate(() => document.documentElement.scrollWidth);
  assert.ok(width <= 360, `the page is ${width} px wide at 360`);
  for (const id of ['prompt', 'send', 'stop', 'temperature', 'max-tokens']) {
    const box = await page.locator(`#${id}`).boundingBox();
    assert.ok(box && box.x >= 0 && box.x + box.width <= 360, `#${id} fits: ${JSON.stringify(box)}`);
  }
  await page.evaluate(() => window.scrollTo(0, document.documentElement.scrollHeight));
  await page.screenshot({ path: path.join(screenshotDir, 'chat-page-narrow.png') });
  ok('at 360 px wide nothing overflows');
  await page.close();
}

// Replies the server cannot be made to give here, served by Playwright in its place: reasoning
// (shown apart, foldable, as text only) and a 429.
async function checkReasoningAnd429(browser, url) {
  const page = await browser.newPage({ viewport: { width: 800, height: 700 } });
  const chunk = (delta) => `data: ${JSON.stringify({ choices: [{ index: 0, delta, finish_reason: null }] })}\n\n`;
  let status = 200;
  await page.route('**/v1/chat/completions', (route) => status === 429
    ? route.fulfill({ status, contentType: 'application/json',
      body: JSON.stringify({ error: { message: 'the server is busy: 4 requests are already waiting' } }) })
    : route.fulfill({ status, contentType: 'text/event-stream', body:
      chunk({ role: 'assistant', content: '' }) + chunk({ reasoning_content: '<b>think</b> first' }) +
      chunk({ content: '<img src=x onerror="window.injected=1">answer' }) +
      `data: ${JSON.stringify({ choices: [], usage: { completion_tokens: 5 } })}\n\ndata: [DONE]\n\n` }));
  await page.goto(url + '/');
  await page.locator('#prompt').fill('hi');
  await page.locator('#prompt').press('Enter');
  const reply = await lastReply(page);
  assert.equal(reply.content, '<img src=x onerror="window.injected=1">answer');
  assert.equal(await page.locator('.message.assistant img').count(), 0);
  const reasoning = page.locator('.message.assistant .reasoning');
  assert.equal(await reasoning.locator('.reasoning-text').textContent(), '<b>think</b> first');
  assert.equal(await reasoning.evaluate((e) => e.open), false);
  await reasoning.locator('summary').focus();
  await page.keyboard.press('Enter');
  assert.equal(await reasoning.evaluate((e) => e.open), true);
  await page.screenshot({ path: path.join(screenshotDir, 'chat-page-reasoning.png') });
  ok('reasoning_content goes into a folded <details> apart from the answer; model text stays text');

  status = 429;
  await page.locator('#prompt').fill('again');
  await page.locator('#prompt').press('Enter');
  await page.locator('#error').filter({ hasText: 'busy (429)' }).waitFor({ timeout: 10000 });
  assert.equal(await page.locator('#prompt').inputValue(), 'again');
  ok('a 429 reads "' + await page.locator('#error').textContent() + '" and keeps the message');
  await page.close();
}

async function checkApiKeyAndServerDown(browser, model) {
  const { url, server } = await startServer(model, ['--api-key', 'page-key-7']);
  const page = await browser.newPage({ viewport: { width: 800, height: 700 } });
  assert.equal((await fetch(url + '/chat.js')).headers.get('content-type'), 'text/javascript; charset=utf-8');
  await page.goto(url + '/');
  await page.locator('#api-key').waitFor({ state: 'visible', timeout: 10000 });
  assert.match(await page.locator('#error').textContent(), /API key \(401\)/);
  assert.equal(await page.evaluate(() => document.activeElement.id), 'api-key');
  await page.keyboard.type('wrong-key');
  await page.keyboard.press('Enter');
  await page.locator('#error').filter({ hasText: 'refused the API key' }).waitFor({ timeout: 10000 });
  await page.screenshot({ path: path.join(screenshotDir, 'chat-page-key.png') });
  await page.keyboard.type('page-key-7');
  await page.keyboard.press('Enter');
  await page.locator('#model').filter({ hasText: 'small-dsv3' }).waitFor({ timeout: 10000 });
  assert.ok(await page.locator('#key-form').isHidden());
  await page.locator('#max-tokens').fill('4');
  await page.locator('#prompt').fill('Hello');
  await page.locator('#prompt').press('Enter');
  assert.equal((await lastReply(page)).state, 'done');
  await page.reload();
  await page.locator('#model').filter({ hasText: 'small-dsv3' }).waitFor({ timeout: 10000 });
  assert.ok(await page.locator('#key-form').isHidden());
  ok('with --api-key the page loads without it, asks for it on the 401, refuses a wrong one, then works and keeps it');

  server.kill('SIGTERM');
  await new Promise((resolve) => server.exitCode !== null ? resolve() : server.on('exit', resolve));
  await page.locator('#prompt').fill('Anyone there?');
  await page.locator('#prompt').press('Enter');
  await page.locator('#error').filter({ hasText: 'Cannot reach the server' }).waitFor({ timeout: 10000 });
  assert.equal(await page.locator('#prompt').inputValue(), 'Anyone there?');
  ok('server down: "' + await page.locator('#error').textContent() + '"');
  await page.close();
}

async function main() {
  const model = path.join(temp, 'model');
  execFileSync(binary, ['init', '--config', path.join(sourceDir, 'tests/serve/small_config.json'),
    '--tokenizer', path.join(dataDir, 'tokenizer/deepseek-v3'), '--out', model], { stdio: 'ignore', timeout: 60000 });
  const { url } = await startServer(model, ['--mtp', '2']);
  for (const [file, type] of [['/', 'text/html; charset=utf-8'], ['/chat.css', 'text/css; charset=utf-8']]) {
    const response = await fetch(url + file);
    assert.equal(response.headers.get('content-type'), type);
    assert.equal(await response.text(), fs.readFileSync(path.join(sourceDir, 'src/serve/page',
      file === '/' ? 'index.html' : file.slice(1)), 'utf8'));
  }
  ok('the page\'s files are served as they are in src/serve/page, with their content types');

  const browser = await playwright.launch({ executablePath: chromium, args: ['--no-sandbox'], timeout: 30000 });
  try {
    await checkReplyAndStop(browser, url);
    await checkReasoningAnd429(browser, url);
    await checkApiKeyAndServerDown(browser, model);
  } finally {
    await browser.close();
  }
  console.log(`all ${checks()} checks passed; screenshots in ${screenshotDir}`);
}

main().then(() => process.exit(0), (e) => { console.error('FAILED:', e && e.stack ? e.stack : e); process.exit(1); });
