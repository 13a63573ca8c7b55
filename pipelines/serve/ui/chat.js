// The chat page of `stf serve`: plain JavaScript, no framework, no network access beyond this
// server. It is a client of the public API like any other: GET v1/models and POST
// v1/chat/completions (streamed), with the same Authorization header an API client sends.
"use strict";

// The API sits next to the page whatever the route prefix ("/" or "/team/stf").
const base = location.origin + location.pathname.replace(/\/?$/, "/");
const $ = (id) => document.getElementById(id);
const els = {
  model: $("model"), keyRow: $("key-row"), key: $("api-key"), useKey: $("use-key"),
  conversation: $("conversation"), hint: $("empty-hint"), notice: $("notice"),
  composer: $("composer"), attachments: $("attachments"), file: $("file"),
  question: $("question"), send: $("send"), stop: $("stop"), newChat: $("new-chat"),
  temperature: $("temperature"), topP: $("top-p"), maxTokens: $("max-tokens"),
  dropZone: $("drop-zone"),
};

const state = {
  modelId: null,
  history: [],      // the OpenAI messages of the finished turns
  images: [],       // attached to the next question: {name, url (a data: URL)}
  controller: null, // aborts the answer being streamed (the Stop button)
  conversation: 0,  // counts New chat: an answer that ends after one belongs to no conversation
};

// What a refusal means for someone at this page, by HTTP status; the server's own message follows.
const STATUS_HINTS = {
  400: "The server refused the request",
  401: "The API key is missing or wrong: enter this server's key above",
  404: "Not found",
  413: "Too large for this server",
  429: "Too many requests: wait a moment and send again",
  500: "The server failed on this request",
  503: "The server is busy or still starting: try again in a moment",
};

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = sessionStorage.getItem("stf-api-key");
  if (key) h.Authorization = `Bearer ${key}`;
  return h;
}

// A readable message for a non-2xx reply: the status, what it means, and the server's message
// (an OpenAI error body, or whatever text a proxy sent).
async function describe(reply) {
  let detail = "";
  const raw = await reply.text();
  try {
    detail = JSON.parse(raw).error.message;
  } catch {
    detail = raw.trim().slice(0, 300);
  }
  const hint = STATUS_HINTS[reply.status] || `HTTP ${reply.status}`;
  return `${reply.status} — ${hint}${detail ? `: ${detail}` : "."}`;
}

function showNotice(message) {
  els.notice.textContent = message;
  els.notice.hidden = !message;
}

async function connect() {
  let reply;
  try {
    reply = await fetch(base + "v1/models", { headers: headers() });
  } catch (err) {
    showNotice(`Cannot reach the server: ${err.message}`);
    return;
  }
  if (reply.status === 401) {
    els.keyRow.hidden = false;  // the server has a key: ask for it
    els.model.textContent = "API key needed";
    showNotice(await describe(reply));
    els.key.focus();
    return;
  }
  if (!reply.ok) {
    showNotice(await describe(reply));
    return;
  }
  state.modelId = (await reply.json()).data[0].id;
  els.model.textContent = state.modelId;
  showNotice("");
}

// ---- attachments: pick, drop or paste ----

function attach(files) {
  for (const file of files) {
    if (!file.type.startsWith("image/")) {
      showNotice(`${file.name || "That file"} is not an image (${file.type || "unknown type"}).`);
      continue;
    }
    const reader = new FileReader();
    reader.onload = () => {
      state.images.push({ name: file.name || "pasted image", url: reader.result });
      renderAttachments();
    };
    reader.readAsDataURL(file);  // sent as is: the server resizes, and applies its size limits
  }
}

function renderAttachments() {
  els.attachments.replaceChildren(...state.images.map((image, index) => {
    const item = document.createElement("div");
    item.className = "attachment";
    const img = document.createElement("img");
    img.src = image.url;
    img.alt = img.title = image.name;
    const remove = document.createElement("button");
    remove.type = "button";
    remove.textContent = "×";
    remove.title = "remove";
    remove.addEventListener("click", () => {
      state.images.splice(index, 1);
      renderAttachments();
    });
    item.append(img, remove);
    return item;
  }));
}

// ---- the conversation ----

function addTurn(role, text, images = []) {
  els.hint.hidden = true;
  const turn = document.createElement("div");
  turn.className = `turn ${role}`;
  for (const image of images) {
    const img = document.createElement("img");
    img.src = image.url;
    img.alt = image.name;
    turn.append(img);
  }
  const body = document.createElement("div");
  body.className = "text";
  body.textContent = text;  // text, never HTML: the model's output cannot inject markup
  turn.append(body);
  els.conversation.append(turn);
  turn.scrollIntoView({ block: "end" });
  return turn;
}

function addLine(turn, className, text) {
  const line = document.createElement("div");
  line.className = className;
  line.textContent = text;
  turn.append(line);
  turn.scrollIntoView({ block: "end" });
}

function sampling() {
  const settings = {};
  const number = (input) => (input.value.trim() === "" ? null : Number(input.value));
  const temperature = number(els.temperature);
  const topP = number(els.topP);
  const maxTokens = number(els.maxTokens);
  if (temperature !== null) settings.temperature = temperature;
  if (topP !== null) settings.top_p = topP;
  if (maxTokens !== null) settings.max_tokens = maxTokens;
  return settings;
}

function setBusy(busy) {
  els.send.disabled = busy;
  els.stop.disabled = !busy;
}

// Reads the server-sent events of a streamed completion, calling onEvent with each JSON payload.
async function readEvents(reply, onEvent) {
  const reader = reply.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      for (const line of event.split("\n")) {
        if (!line.startsWith("data:")) continue;
        const data = line.slice(5).trim();
        if (data === "[DONE]") return;
        onEvent(JSON.parse(data));
      }
    }
  }
}

async function send() {
  const question = els.question.value.trim();
  if (!question && !state.images.length) return;
  const images = state.images.slice();
  const parts = images.map((image) => ({ type: "image_url", image_url: { url: image.url } }));
  if (question) parts.push({ type: "text", text: question });
  const message = { role: "user", content: images.length ? parts : question };
  const userTurn = addTurn("user", question, images);
  const answerTurn = addTurn("assistant", "");
  const answer = answerTurn.querySelector(".text");
  const body = {
    messages: [...state.history, message],
    stream: true,
    stream_options: { include_usage: true },
    ...sampling(),
  };
  if (state.modelId) body.model = state.modelId;
  const conversation = state.conversation;
  state.controller = new AbortController();
  setBusy(true);
  showNotice("");
  const started = performance.now();
  let finish = null;
  let usage = null;
  let failure = null;
  try {
    const reply = await fetch(base + "v1/chat/completions", {
      method: "POST", headers: headers(), body: JSON.stringify(body),
      signal: state.controller.signal,
    });
    if (!reply.ok) {
      failure = await describe(reply);
      if (reply.status === 401) els.keyRow.hidden = false;
    } else {
      await readEvents(reply, (event) => {
        if (event.error) throw new Error(`the server failed while answering: ${event.error.message}`);
        if (event.usage) usage = event.usage;
        const choice = event.choices && event.choices[0];
        if (!choice) return;
        if (choice.delta && choice.delta.content) answer.textContent += choice.delta.content;
        if (choice.finish_reason) finish = choice.finish_reason;
      });
    }
  } catch (err) {
    if (err.name === "AbortError") finish = "stopped";
    else failure = err.message.startsWith("the server") ? err.message : `Network error: ${err.message}`;
  } finally {
    state.controller = null;
    setBusy(false);
  }
  if (conversation !== state.conversation) return;  // New chat was pressed meanwhile
  if (failure === null && finish === "stopped" && !answer.textContent) {
    failure = "Stopped before the answer began.";
  }
  if (failure !== null) {
    // Nothing joins the history; the question and its images stay in the composer to retry.
    userTurn.classList.add("failed");
    answerTurn.remove();
    addLine(userTurn, "error", failure);
    return;
  }
  state.history.push(message, { role: "assistant", content: answer.textContent });
  state.images = [];
  renderAttachments();
  els.question.value = "";
  addLine(answerTurn, "meta", meta(usage, finish, (performance.now() - started) / 1000));
}

function meta(usage, finish, seconds) {
  const parts = [];
  if (usage) {
    const vision = usage.prompt_tokens_details && usage.prompt_tokens_details.image_tokens;
    parts.push(`prompt ${usage.prompt_tokens} tokens (${vision || 0} vision)`);
    parts.push(`answer ${usage.completion_tokens} tokens`);
  }
  if (finish) parts.push(finish === "length" ? "cut at max tokens" : finish);
  parts.push(`${seconds.toFixed(2)} s`);
  return parts.join(" · ");
}

// ---- wiring ----

els.composer.addEventListener("submit", (event) => {
  event.preventDefault();
  send();
});
els.question.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    if (!els.send.disabled) send();
  }
});
els.stop.addEventListener("click", () => state.controller && state.controller.abort());
els.newChat.addEventListener("click", () => {
  if (state.controller) state.controller.abort();
  state.conversation += 1;
  state.history = [];
  els.conversation.replaceChildren(els.hint);
  els.hint.hidden = false;
});
els.file.addEventListener("change", () => {
  attach(els.file.files);
  els.file.value = "";
});
els.useKey.addEventListener("click", () => {
  sessionStorage.setItem("stf-api-key", els.key.value.trim());
  connect();
});
els.key.addEventListener("keydown", (event) => {
  if (event.key === "Enter") els.useKey.click();
});
document.addEventListener("paste", (event) => {
  const files = [...event.clipboardData.files].filter((f) => f.type.startsWith("image/"));
  if (files.length) {
    event.preventDefault();
    attach(files);
  }
});
window.addEventListener("dragover", (event) => {
  event.preventDefault();
  els.dropZone.hidden = false;
});
window.addEventListener("dragleave", (event) => {
  if (!event.relatedTarget) els.dropZone.hidden = true;
});
window.addEventListener("drop", (event) => {
  event.preventDefault();
  els.dropZone.hidden = true;
  attach(event.dataTransfer.files);
});

if (sessionStorage.getItem("stf-api-key")) els.key.value = sessionStorage.getItem("stf-api-key");
connect();
