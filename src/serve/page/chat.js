// The chat page of `dsv3 serve`: streams /v1/chat/completions with fetch and reads its
// server-sent events by hand (EventSource cannot POST). Model text is only ever inserted as text.
'use strict';

const $ = (id) => document.getElementById(id);
const conversation = $('conversation');
const prompt = $('prompt');
const sendButton = $('send');
const stopButton = $('stop');
const errorBox = $('error');
const keyForm = $('key-form');
const keyInput = $('api-key');

const messages = [];  // the conversation sent with each request: {role, content}
let modelName = null;
let controller = null;  // the running request's AbortController

// Settings survive a reload; the API key too, in this browser only.
const stored = (name, fallback) => localStorage.getItem('dsv3.' + name) ?? fallback;
for (const id of ['temperature', 'max-tokens']) {
  $(id).value = stored(id, $(id).value);
  $(id).addEventListener('change', () => localStorage.setItem('dsv3.' + id, $(id).value));
}

function headers() {
  const result = { 'Content-Type': 'application/json' };
  const key = localStorage.getItem('dsv3.api-key');
  if (key) result.Authorization = 'Bearer ' + key;
  return result;
}

function showError(text) {
  errorBox.textContent = text;
  errorBox.hidden = !text;
}

function askForKey(refused) {
  keyForm.hidden = false;
  showError(refused ? 'The server refused the API key (401): enter the right one.'
                    : 'The server needs an API key (401): enter it above.');
  keyInput.focus();
}

// A readable sentence for a failed response, with the server's own message when it sent one.
async function describe(response) {
  let detail = '';
  try {
    detail = (await response.json()).error.message;
  } catch {
    // not JSON: the status says enough
  }
  const what = response.status === 429 ? 'The server is busy (429); try again in a moment'
             : response.status >= 500 ? `The server failed (${response.status})`
             : `The request was refused (${response.status})`;
  return detail ? `${what}: ${detail}` : what + '.';
}

function unreachable() {
  return `Cannot reach the server at ${location.origin}: is dsv3 serve still running?`;
}

async function loadModel() {
  try {
    const response = await fetch('/v1/models', { headers: headers(), signal: AbortSignal.timeout(10000) });
    if (response.status === 401) return askForKey(Boolean(localStorage.getItem('dsv3.api-key')));
    if (!response.ok) return showError(await describe(response));
    modelName = (await response.json()).data[0].id;
    $('model').textContent = modelName;
    showError('');
  } catch {
    showError(unreachable());
  }
}

function addMessage(role, text) {
  const item = document.createElement('li');
  item.className = 'message ' + role;
  item.textContent = text;
  conversation.append(item);
  item.scrollIntoView({ block: 'end' });
  return item;
}

function addReply() {
  const item = $('reply-template').content.firstElementChild.cloneNode(true);
  item.dataset.state = 'streaming';
  conversation.append(item);
  return item;
}

// Yields each event's parsed data from a server-sent-events body until [DONE].
async function* events(body) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let end;
    while ((end = buffer.indexOf('\n\n')) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      for (const line of event.split('\n')) {
        if (!line.startsWith('data: ')) continue;
        const data = line.slice(6);
        if (data === '[DONE]') return;
        yield JSON.parse(data);
      }
    }
  }
}

// Speed over the whole reply, as the page saw it: from sending to the last token, the prompt
// included (the network may bunch tokens, so a rate after the first token would overstate it).
function statsText(usage, seconds, firstTokenSeconds) {
  const tokens = usage.completion_tokens;
  const rate = tokens / Math.max(seconds, 1e-3);
  const parts = [`${tokens} tokens in ${seconds.toFixed(2)} s`, `${rate.toFixed(1)} tokens/s`,
    `first token ${firstTokenSeconds.toFixed(2)} s`];
  const speculation = usage.speculation;
  if (speculation) {
    const share = speculation.drafted ? (100 * speculation.accepted / speculation.drafted).toFixed(0) : '0';
    parts.push(`MTP accepted ${speculation.accepted} of ${speculation.drafted} drafts (${share}%)`);
  }
  return parts.join(' · ');
}

async function send(text) {
  showError('');
  const user = addMessage('user', text);
  messages.push({ role: 'user', content: text });
  const body = {
    model: modelName || 'dsv3', messages, stream: true, stream_options: { include_usage: true },
    temperature: Number($('temperature').value), max_tokens: Number($('max-tokens').value),
  };
  controller = new AbortController();
  sendButton.disabled = true;
  stopButton.disabled = false;
  let reply = null;
  let content = '';
  const started = performance.now();
  let firstToken = null;
  try {
    const response = await fetch('/v1/chat/completions', {
      method: 'POST', headers: headers(), body: JSON.stringify(body), signal: controller.signal,
    });
    if (!response.ok) {
      // The message goes back to the box, to send again once the problem is fixed.
      messages.pop();
      user.remove();
      prompt.value = text;
      if (response.status === 401) return askForKey(Boolean(localStorage.getItem('dsv3.api-key')));
      return showError(await describe(response));
    }
    reply = addReply();
    const contentBox = reply.querySelector('.content');
    const reasoningBox = reply.querySelector('.reasoning-text');
    for await (const event of events(response.body)) {
      if (event.error) throw new Error(event.error.message);
      if (event.usage) {
        reply.querySelector('.stats').textContent =
          statsText(event.usage, (performance.now() - started) / 1000, ((firstToken ?? performance.now()) - started) / 1000);
      }
      const delta = event.choices[0]?.delta;
      if (!delta) continue;
      if (delta.reasoning_content || delta.content) firstToken ??= performance.now();
      if (delta.reasoning_content) {
        reply.querySelector('.reasoning').hidden = false;
        reasoningBox.append(delta.reasoning_content);
      }
      if (delta.content) {
        content += delta.content;
        contentBox.append(delta.content);
      }
      reply.scrollIntoView({ block: 'end' });
    }
    reply.dataset.state = 'done';
  } catch (error) {
    if (error.name === 'AbortError') {
      if (reply) {
        reply.dataset.state = 'stopped';
        reply.querySelector('.stats').textContent = 'Stopped.';
      }
    } else {
      if (reply) reply.dataset.state = 'failed';
      showError(error instanceof TypeError && !reply ? unreachable() : 'The reply broke off: ' + error.message);
    }
  } finally {
    controller = null;
    sendButton.disabled = false;
    stopButton.disabled = true;
  }
  if (reply) messages.push({ role: 'assistant', content });
  else if (messages.at(-1)?.role === 'user' && messages.at(-1).content === text && !prompt.value) {
    // No reply at all (the server is down): keep the text for another try.
    messages.pop();
    user.remove();
    prompt.value = text;
  }
  prompt.focus();
}

$('composer').addEventListener('submit', (event) => {
  event.preventDefault();
  const text = prompt.value.trim();
  if (!text || controller) return;
  prompt.value = '';
  send(text);
});

prompt.addEventListener('keydown', (event) => {
  if (event.key === 'Enter' && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    $('composer').requestSubmit();
  }
});

stopButton.addEventListener('click', () => controller?.abort());
document.addEventListener('keydown', (event) => {
  if (event.key === 'Escape' && controller) controller.abort();
});

$('new-chat').addEventListener('click', () => {
  controller?.abort();
  messages.length = 0;
  conversation.replaceChildren();
  showError('');
  prompt.focus();
});

keyForm.addEventListener('submit', async (event) => {
  event.preventDefault();
  localStorage.setItem('dsv3.api-key', keyInput.value.trim());
  keyInput.value = '';
  keyForm.hidden = true;
  await loadModel();
  if (keyForm.hidden) prompt.focus();
});

loadModel();
