// The sandbox page: long-polls /sandbox/state and renders the chosen platform user's chat,
// the fault buttons and the raw requests; posts what the user types or clicks to /sandbox/send.
"use strict";

const FAULT_LABELS = {
  rate_limit: "rate limit",
  server_error: "5xx server error",
  timeout: "timeout",
  permanent: "permanent error",
};
const TICKS = { sent: "✓", delivered: "✓✓", read: "✓✓" };
const view = { platform: "whatsapp", user: "ana" };
let state = null;
let version = 0;
let seen = 0;
const exchanges = [];

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === "class") node.className = value;
    else if (key === "on") for (const [event, fn] of Object.entries(value)) node.addEventListener(event, fn);
    else if (key.startsWith("data-") || key.startsWith("aria-")) node.setAttribute(key, value);
    else node[key] = value;
  }
  for (const child of children) if (child !== null && child !== undefined) node.append(child);
  return node;
}

function currentUser() {
  const platform = state.platforms.find((p) => p.id === view.platform);
  return platform.users.find((u) => u.key === view.user) || platform.users[0];
}

async function post(path, body) {
  const error = document.getElementById("error");
  error.textContent = "";
  const response = await fetch(path, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body),
  });
  const answer = await response.json().catch(() => ({}));
  if (!response.ok) error.textContent = answer.error || `the sandbox answered ${response.status}`;
  return answer;
}

function send(extra) {
  return post("/sandbox/send", { platform: view.platform, user: view.user, ...extra });
}

function renderSidebar() {
  const tabs = document.getElementById("platforms");
  tabs.replaceChildren(...state.platforms.map((p) => el("button", {
    type: "button", textContent: p.label, "aria-pressed": String(p.id === view.platform),
    "data-platform": p.id, on: { click: () => { view.platform = p.id; render(); } },
  })));
  const platform = state.platforms.find((p) => p.id === view.platform);
  document.getElementById("users").replaceChildren(...platform.users.map((u) => el("button", {
    type: "button", "aria-pressed": String(u.key === view.user), "data-user": u.key,
    on: { click: () => { view.user = u.key; render(); } },
  }, el("span", { textContent: u.name }), el("br"), el("small", { textContent: u.user_id }))));
  const armed = state.faults[view.platform] || "";
  document.getElementById("faults").replaceChildren(...state.fault_kinds.map((kind) => el("button", {
    type: "button", textContent: FAULT_LABELS[kind] || kind, "aria-pressed": String(armed === kind),
    "data-fault": kind,
    on: { click: () => post("/sandbox/faults", { platform: view.platform, fault: armed === kind ? "" : kind }) },
  })));
}

function choiceButton(choice, entry) {
  if (choice.url) return el("a", { href: choice.url, target: "_blank", rel: "noopener", textContent: choice.title });
  return el("button", {
    type: "button", textContent: choice.title, "data-choice": choice.id,
    on: { click: () => send({ choice: { ...choice, reply_to: entry.platform_id } }) },
  });
}

function renderMessage(entry) {
  const ticks = entry.sender !== "note" && entry.status
    ? el("span", { class: `ticks ${entry.status}`, title: entry.status, textContent: TICKS[entry.status] || "" })
    : null;
  if (entry.sender !== "bot" || !entry.view) {
    const image = entry.image ? el("img", { src: entry.image, alt: "the image sent", class: "sent-image" }) : null;
    return el("li", { class: `msg ${entry.sender}`, "data-status": entry.status }, ticks, image, entry.text);
  }
  const v = entry.view;
  const choices = (v.choices || []).length
    ? el("div", { class: "choices" }, ...v.choices.map((c) => choiceButton(c, entry)))
    : null;
  return el("li", { class: "msg bot", "data-status": entry.status },
    ticks,
    el("span", { class: "form", textContent: v.form }),
    v.header ? el("span", { class: "header", textContent: v.header }) : null,
    v.media ? el("em", { textContent: `[${v.media}] ` }) : null,
    v.text || "",
    choices);
}

function renderChat() {
  const platform = state.platforms.find((p) => p.id === view.platform);
  const user = currentUser();
  document.getElementById("chat").className = `platform-${view.platform}`;
  document.getElementById("chat-title").replaceChildren(
    `${platform.label} · ${user.name}`, el("small", { textContent: user.user_id }));
  const list = document.getElementById("messages");
  const entries = state.chats[`${view.platform}:${user.address}`] || [];
  const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 40;
  list.replaceChildren(...entries.map(renderMessage));
  if (atBottom) list.scrollTop = list.scrollHeight;
}

function pretty(value) {
  return typeof value === "string" ? value : JSON.stringify(value, null, 2);
}

// What one exchange was, in a word or two: a message's type, a sender action, a receipt.
function describe(x) {
  const body = x.body && typeof x.body === "object" ? x.body : {};
  if (x.direction === "to platform") {
    if (body.sender_action) return body.sender_action;
    if (body.status === "read") return "mark read";
    if (body.type) return body.type;
    if (body.blocks) return "blocks";
    return body.message ? Object.keys(body.message)[0] : "";
  }
  const value = body.entry?.[0]?.changes?.[0]?.value;
  if (value?.statuses) return `status ${value.statuses[0].status}`;
  if (value?.messages) return `message ${value.messages[0].type}`;
  const item = body.entry?.[0]?.messaging?.[0];
  if (item) return ["delivery", "read", "postback", "message"].find((k) => k in item) || "";
  if (body.name) return body.name.split("/").pop();
  if (body.event) return `event ${body.event.subtype || body.event.type}`;
  return body.type || "";
}

function renderPanel() {
  const list = document.getElementById("exchanges");
  // The chosen platform's (and the media it fetched), newest first.
  const mine = exchanges.filter((x) => x.platform === view.platform || x.platform === "media" || x.platform === "meta");
  const shown = mine.slice(-100).reverse();
  list.replaceChildren(...shown.map((x) => el("li", {},
    el("details", {},
      el("summary", {},
        `${x.direction === "to bridge" ? "↓" : "↑"} ${x.platform} ${x.method} ${x.path.replace(/^https?:\/\/[^/]+/, "")} `,
        el("span", { class: x.status >= 300 || x.status === 0 ? "status-bad" : "", textContent: String(x.status) }),
        el("span", { class: "what", textContent: ` ${describe(x)}` })),
      el("div", { textContent: "headers" }), el("pre", { textContent: pretty(x.headers) }),
      el("div", { textContent: "body" }), el("pre", { textContent: pretty(x.body) }),
      el("div", { textContent: "answer" }), el("pre", { textContent: pretty(x.answer) })))));
}

function render() {
  if (!state) return;
  const connection = document.getElementById("connection");
  connection.textContent = state.connected ? "connected to the bridge" : "no bridge";
  connection.className = state.connected ? "pill ok" : "pill";
  renderSidebar();
  renderChat();
  renderPanel();
}

async function poll() {
  for (;;) {
    try {
      // The first answer at once; then each waits for a change (a long poll).
      const wait = state ? 1 : 0;
      const response = await fetch(`/sandbox/state?wait=${wait}&after=${version}&seen=${seen}`);
      state = await response.json();
      version = state.version;
      exchanges.push(...state.exchanges);
      // The server keeps the newest 200 (PANEL_SIZE); so does the page, however long it runs.
      if (exchanges.length > 200) exchanges.splice(0, exchanges.length - 200);
      if (exchanges.length) seen = exchanges[exchanges.length - 1].seq;
      render();
    } catch (error) {
      document.getElementById("connection").textContent = "sandbox unreachable";
      await new Promise((resolve) => setTimeout(resolve, 2000));
    }
  }
}

document.getElementById("composer").addEventListener("submit", async (event) => {
  event.preventDefault();
  const input = document.getElementById("text");
  if (!input.value.trim()) return;
  const text = input.value;
  input.value = "";
  await send({ text });
});
document.getElementById("sample").addEventListener("click", () => send({ image: "sample" }));
document.getElementById("image").addEventListener("change", (event) => {
  const file = event.target.files[0];
  if (!file) return;
  const reader = new FileReader();
  reader.onload = () => {
    const data = String(reader.result).split(",", 2)[1];
    send({ image: { name: file.name, type: file.type, data } });
    event.target.value = "";
  };
  reader.readAsDataURL(file);
});
poll();
