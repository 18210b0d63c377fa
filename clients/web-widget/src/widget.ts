// chat-service's web chat widget: one script tag embeds it.
//
//   <script src="https://chat.example/web/v1/widget.js" data-tenant="acme"
//           data-site-key="..." async></script>
//
// Optional attributes: data-user-id and data-user-hash (a logged-in user, the hash computed
// by the tenant's backend), data-title, data-open="true" (open at once).
//
// It renders in a shadow root (the page's CSS cannot reach it), talks to the bridge's gateway
// (docs/web-chat.md): a visitor session over HTTP, then one WebSocket. Every message the
// server stores has a sequence: the widget shows each sequence once and, after a reconnect or
// a reload, resumes after the last one it has, so nothing is missed and nothing repeats.
// Messages not yet acknowledged stay pending (kept in localStorage) and are sent again with
// the same client id, which the server stores once.

(() => {
  type Json = any; // eslint-disable-line @typescript-eslint/no-explicit-any

  interface Stored {
    token: string;
    expires_at: number;
    visitor_id: string;
  }

  interface Pending {
    client_id: string;
    text: string;
    media_id?: string;
    choice?: { id: string; title: string };
    preview?: string;
    file_name?: string;
  }

  interface Row {
    el: HTMLElement;
    tick?: HTMLElement;
    direction: "in" | "out";
  }

  const script = (document.currentScript ||
    document.querySelector("script[data-tenant][src*='widget']")) as HTMLScriptElement | null;
  if (!script || !script.dataset.tenant || !script.dataset.siteKey) {
    console.warn("chat widget: data-tenant and data-site-key are required");
    return;
  }
  const tenant = script.dataset.tenant;
  const siteKey = script.dataset.siteKey;
  const base = new URL(script.src, location.href).origin;
  const api = `${base}/web/v1/${encodeURIComponent(tenant)}`;
  const storeKey = `chat-web:${tenant}`;
  const pendingKey = `${storeKey}:pending`;
  const REFRESH_BEFORE_MS = 5 * 60 * 1000;
  const MAX_BACKOFF_MS = 30_000;

  let session: Stored | null = load<Stored>(storeKey);
  // An object URL (an upload's preview) does not outlive the page that made it.
  let pending: Pending[] = (load<Pending[]>(pendingKey) || []).map((p) => ({ ...p, preview: undefined }));
  let socket: WebSocket | null = null;
  let attempts = 0;
  let lastSequence = 0;
  let lastOutbound = 0;
  let refreshTimer = 0;
  let reconnectTimer = 0;
  let typingSent = 0;
  let typingStop = 0;
  let typingShown = 0;
  const rows = new Map<number, Row>();
  const pendingRows = new Map<string, Row>();
  // Object URLs of shown media (fetched or previewed): revoked when the view is cleared or
  // the page goes, so the blobs they pin are freed.
  const objectUrls = new Set<string>();
  addEventListener("pagehide", revokeAll);

  // ---- the DOM, in a shadow root ----
  const host = document.createElement("div");
  host.setAttribute("data-chat-widget", tenant);
  const root = host.attachShadow({ mode: "open" });
  root.innerHTML = `<style>${CSS()}</style>
<button class="launcher" type="button" aria-label="Open chat" aria-expanded="false"><svg viewBox="0 0 24 24" width="26" height="26" aria-hidden="true"><path fill="currentColor" d="M4 3h16a2 2 0 0 1 2 2v11a2 2 0 0 1-2 2H9l-5 4v-4a2 2 0 0 1-2-2V5a2 2 0 0 1 2-2z"/></svg></button>
<section class="panel" role="dialog" aria-label="Chat" hidden>
  <header><span class="title"></span><span class="state" role="status" aria-live="polite">Connecting…</span>
    <button class="close" type="button" aria-label="Close chat">×</button></header>
  <div class="log" role="log" aria-live="polite" aria-label="Conversation" tabindex="0"></div>
  <div class="typing" aria-live="polite" hidden>typing…</div>
  <form class="composer">
    <label class="attach" aria-label="Attach a file" tabindex="0" role="button"><svg viewBox="0 0 24 24" width="20" height="20" aria-hidden="true"><path fill="none" stroke="currentColor" stroke-width="2" stroke-linecap="round" d="M21 11.5l-8.5 8.5a5 5 0 0 1-7-7L14 4.5a3.5 3.5 0 0 1 5 5L10.5 18a2 2 0 0 1-3-3L15 7.5"/></svg><input type="file" hidden></label>
    <textarea rows="1" aria-label="Message" placeholder="Write a message…"></textarea>
    <button class="send" type="submit" aria-label="Send">➤</button>
  </form>
</section>`;
  const $ = <T extends Element>(selector: string) => root.querySelector(selector) as T;
  const launcher = $<HTMLButtonElement>(".launcher");
  const panel = $<HTMLElement>(".panel");
  const log = $<HTMLElement>(".log");
  const state = $<HTMLElement>(".state");
  const typing = $<HTMLElement>(".typing");
  const form = $<HTMLFormElement>(".composer");
  const input = $<HTMLTextAreaElement>("textarea");
  const file = $<HTMLInputElement>("input[type=file]");
  $<HTMLElement>(".title").textContent = script.dataset.title || "Chat";

  const open = (show: boolean) => {
    panel.hidden = !show;
    launcher.setAttribute("aria-expanded", String(show));
    if (show) {
      input.focus();
      markRead();
    } else {
      launcher.focus();
    }
  };
  launcher.addEventListener("click", () => open(panel.hidden));
  $<HTMLButtonElement>(".close").addEventListener("click", () => open(false));
  panel.addEventListener("keydown", (e) => {
    if (e.key === "Escape") open(false);
  });
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    const text = input.value.trim();
    if (!text) return;
    input.value = "";
    stopTyping();
    queue({ client_id: newId(), text });
  });
  input.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey) {
      e.preventDefault();
      form.requestSubmit();
    }
  });
  input.addEventListener("input", onTyping);
  const attach = $<HTMLElement>(".attach");
  attach.addEventListener("keydown", (e) => {
    if (e.key === "Enter" || e.key === " ") {
      e.preventDefault();
      file.click();
    }
  });
  file.addEventListener("change", () => {
    const chosen = file.files && file.files[0];
    file.value = "";
    if (chosen) void upload(chosen);
  });
  document.body.appendChild(host);
  if (script.dataset.open === "true") open(true);

  // ---- storage ----
  function load<T>(key: string): T | null {
    try {
      const raw = localStorage.getItem(key);
      return raw ? (JSON.parse(raw) as T) : null;
    } catch {
      return null;
    }
  }
  function save(key: string, value: unknown) {
    try {
      localStorage.setItem(key, JSON.stringify(value));
    } catch {
      // Storage full or disabled: the widget still works, a reload starts afresh.
    }
  }
  function newId(): string {
    const bytes = new Uint8Array(16);
    crypto.getRandomValues(bytes);
    return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  // ---- the session (a visitor token) ----
  async function startSession(): Promise<void> {
    const body: Json = { site_key: siteKey };
    if (script!.dataset.userId) {
      body.user_id = script!.dataset.userId;
      body.user_hash = script!.dataset.userHash || "";
    } else if (session && session.expires_at * 1000 > Date.now() + 5000) {
      body.token = session.token; // a refresh: the same visitor, the same conversation
    }
    let response = await fetch(`${api}/sessions`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
    });
    if (response.status === 401 && body.token) {
      delete body.token; // the old token is no longer good: a new anonymous visitor
      response = await fetch(`${api}/sessions`, {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify(body),
      });
    }
    const answer: Json = await response.json().catch(() => ({}));
    if (!response.ok) throw new Error(answer.error || `HTTP ${response.status}`);
    if (session && session.visitor_id !== answer.visitor_id) {
      clearConversation();
      pending = [];
      save(pendingKey, pending);
    }
    session = { token: answer.token, expires_at: answer.expires_at, visitor_id: answer.visitor_id };
    save(storeKey, session);
    scheduleRefresh();
  }

  function scheduleRefresh() {
    clearTimeout(refreshTimer);
    if (!session) return;
    const wait = Math.max(1000, session.expires_at * 1000 - Date.now() - REFRESH_BEFORE_MS);
    refreshTimer = window.setTimeout(refresh, wait);
  }

  async function refresh() {
    try {
      await startSession();
      if (socket && socket.readyState === WebSocket.OPEN) {
        socket.send(JSON.stringify({ type: "auth", token: session!.token }));
      }
    } catch {
      refreshTimer = window.setTimeout(refresh, 10_000);
    }
  }

  // ---- the socket ----
  async function connect() {
    clearTimeout(reconnectTimer);
    setState("Connecting…");
    try {
      if (!session || session.expires_at * 1000 < Date.now() + 60_000) await startSession();
    } catch (error) {
      return retry(String((error as Error).message || error));
    }
    const ws = new WebSocket(`${api.replace(/^http/, "ws")}/socket`);
    socket = ws;
    ws.onopen = () => {
      ws.send(JSON.stringify({ type: "auth", token: session!.token, after_sequence: lastSequence }));
    };
    ws.onmessage = (event) => {
      let frame: Json;
      try {
        frame = JSON.parse(event.data);
      } catch {
        return;
      }
      onFrame(frame);
    };
    ws.onclose = (event) => {
      if (socket !== ws) return;
      socket = null;
      if (event.code === 4401) session = null; // a new token first
      retry(event.reason || "disconnected");
    };
  }

  function retry(why: string) {
    attempts += 1;
    // Exponential backoff with full jitter: after a gateway restart, the visitors come back
    // spread out rather than all at once.
    const ceiling = Math.min(MAX_BACKOFF_MS, 500 * 2 ** Math.min(attempts, 8));
    const wait = Math.round(ceiling / 2 + (Math.random() * ceiling) / 2);
    setState(`Reconnecting in ${Math.ceil(wait / 1000)} s…`, why);
    reconnectTimer = window.setTimeout(connect, wait);
  }

  function setState(text: string, detail = "") {
    state.textContent = text;
    state.title = detail;
    host.setAttribute("data-state", text === "Online" ? "online" : "offline");
  }

  function sendFrame(frame: Json): boolean {
    if (!socket || socket.readyState !== WebSocket.OPEN) return false;
    socket.send(JSON.stringify(frame));
    return true;
  }

  function onFrame(frame: Json) {
    switch (frame.type) {
      case "ready":
        attempts = 0;
        setState("Online");
        if (lastSequence > frame.last_sequence) {
          // The conversation we showed is gone (closed): start the view afresh.
          clearConversation();
        }
        for (const item of pending) sendPending(item);
        break;
      case "message":
        onMessage(frame);
        break;
      case "ack":
        onAck(frame.client_id, frame.sequence);
        break;
      case "typing":
        showTyping(frame.typing);
        break;
      case "status":
        break; // the bot's own messages: nothing to show
      case "closed":
        note("The conversation was closed. Write to start a new one.");
        break;
      case "error":
        onError(frame);
        break;
      case "token_expiring":
        void refresh();
        break;
    }
  }

  function onError(frame: Json) {
    const item = pending.find((p) => p.client_id === frame.client_id);
    if (!item) {
      note(frame.reason);
      return;
    }
    if (frame.code === "RATE_LIMITED" || frame.retryable || frame.code === "TOO_MANY_PENDING") {
      window.setTimeout(() => sendPending(item), Math.max(1, frame.retry_after || 2) * 1000);
      return;
    }
    dropPending(item.client_id);
    const row = pendingRows.get(item.client_id);
    if (row && row.tick) {
      row.tick.textContent = "⚠";
      row.tick.setAttribute("aria-label", `not sent: ${frame.reason}`);
      row.el.classList.add("failed");
    }
  }

  // ---- sending ----
  function queue(item: Pending) {
    pending.push(item);
    save(pendingKey, pending);
    showPending(item);
    sendPending(item);
  }

  function showPending(item: Pending) {
    const row = render({ direction: "in", content: contentOf(item) }, item);
    row.el.classList.add("unsent");
    pendingRows.set(item.client_id, row);
    setTick(row, "pending");
  }

  function contentOf(item: Pending): Json {
    if (item.media_id) return { media: { caption: item.text, file_name: item.file_name } };
    if (item.choice) return { interactive_reply: { selected_id: item.choice.id, title: item.choice.title } };
    return { text: { text: item.text } };
  }

  function sendPending(item: Pending) {
    if (!pending.includes(item)) return;
    sendFrame({
      type: "send",
      client_id: item.client_id,
      text: item.text,
      ...(item.media_id ? { media_id: item.media_id } : {}),
      ...(item.choice ? { choice: item.choice } : {}),
    });
  }

  function dropPending(clientId: string) {
    pending = pending.filter((p) => p.client_id !== clientId);
    save(pendingKey, pending);
  }

  function onAck(clientId: string, sequence: number) {
    dropPending(clientId);
    const row = pendingRows.get(clientId);
    if (!row) return;
    if (rows.has(sequence) && rows.get(sequence) !== row) {
      row.el.remove(); // the stream showed it already
    } else if (!rows.has(sequence)) {
      setTick(row, "sent");
    }
    row.el.classList.remove("unsent");
  }

  async function upload(chosen: File) {
    if (!session) return note("Not connected yet; try again in a moment.");
    const data = new FormData();
    data.append("file", chosen, chosen.name);
    const response = await fetch(`${api}/uploads`, {
      method: "POST",
      headers: { Authorization: `Bearer ${session.token}` },
      body: data,
    }).catch(() => null);
    const answer: Json = response ? await response.json().catch(() => ({})) : {};
    if (!response || !response.ok) return note(`Upload refused: ${answer.error || "network error"}`);
    queue({
      client_id: newId(),
      text: "",
      media_id: answer.media_id,
      file_name: chosen.name,
      preview: chosen.type.startsWith("image/") ? track(URL.createObjectURL(chosen)) : undefined,
    });
  }

  function onTyping() {
    const now = Date.now();
    if (now - typingSent > 2000) {
      typingSent = now;
      sendFrame({ type: "typing", typing: true });
    }
    clearTimeout(typingStop);
    typingStop = window.setTimeout(stopTyping, 3000);
  }

  function stopTyping() {
    clearTimeout(typingStop);
    if (typingSent) sendFrame({ type: "typing", typing: false });
    typingSent = 0;
  }

  function showTyping(on: boolean) {
    clearTimeout(typingShown);
    typing.hidden = !on;
    if (on) typingShown = window.setTimeout(() => (typing.hidden = true), 10_000);
  }

  function markRead() {
    if (!panel.hidden && lastOutbound) sendFrame({ type: "read", up_to_sequence: lastOutbound });
  }

  // ---- receiving ----
  function onMessage(frame: Json) {
    if (frame.sequence <= lastSequence || rows.has(frame.sequence)) return; // seen: once only
    lastSequence = frame.sequence;
    let row: Row | undefined = frame.client_id ? pendingRows.get(frame.client_id) : undefined;
    if (row && !rows.has(frame.sequence)) {
      dropPending(frame.client_id);
      row.el.classList.remove("unsent");
      setTick(row, "delivered");
    } else {
      row = render(frame);
      if (frame.direction === "in") setTick(row, "delivered");
    }
    rows.set(frame.sequence, row);
    if (frame.direction === "out") {
      showTyping(false);
      lastOutbound = frame.sequence;
      // A reply means the service has read what came before it.
      rows.forEach((r, seq) => seq < frame.sequence && r.direction === "in" && setTick(r, "read"));
      markRead();
    }
  }

  function track(url: string): string {
    objectUrls.add(url);
    return url;
  }

  function revokeAll() {
    objectUrls.forEach((url) => URL.revokeObjectURL(url));
    objectUrls.clear();
  }

  function clearConversation() {
    revokeAll();
    log.textContent = "";
    rows.clear();
    pendingRows.clear();
    lastSequence = 0;
    lastOutbound = 0;
  }

  function note(text: string) {
    const el = document.createElement("p");
    el.className = "note";
    el.textContent = text;
    log.appendChild(el);
    log.scrollTop = log.scrollHeight;
  }

  const TICKS: Record<string, [string, string]> = {
    pending: ["◷", "pending"],
    sent: ["✓", "sent"],
    delivered: ["✓✓", "delivered"],
    read: ["✓✓", "read"],
  };

  function setTick(row: Row, status: string) {
    if (!row.tick) return;
    const [mark, label] = TICKS[status];
    row.tick.textContent = mark;
    row.tick.setAttribute("aria-label", label);
    row.tick.className = `tick ${status}`;
  }

  function render(frame: Json, item?: Pending): Row {
    const el = document.createElement("div");
    el.className = `msg ${frame.direction}`;
    const content = frame.content || {};
    if (content.text) {
      bubble(el, content.text.text);
    } else if (content.media) {
      media(el, content.media, item, frame);
    } else if (content.interactive) {
      interactive(el, content.interactive);
    } else if (content.interactive_reply) {
      bubble(el, content.interactive_reply.title || content.interactive_reply.selected_id);
    } else if (content.location) {
      bubble(el, `Location: ${content.location.name || `${content.location.latitude}, ${content.location.longitude}`}`);
    }
    const row: Row = { el, direction: frame.direction };
    if (frame.direction === "in") {
      row.tick = document.createElement("span");
      row.tick.className = "tick";
      el.appendChild(row.tick);
    }
    // Stored messages come before those not yet acknowledged.
    const firstUnsent = item ? null : log.querySelector(".unsent");
    log.insertBefore(el, firstUnsent);
    log.scrollTop = log.scrollHeight;
    return row;
  }

  function bubble(parent: HTMLElement, text: string): HTMLElement {
    const el = document.createElement("p");
    el.className = "bubble";
    el.textContent = text;
    parent.appendChild(el);
    return el;
  }

  function media(parent: HTMLElement, m: Json, item?: Pending, frame?: Json) {
    const box = document.createElement("figure");
    box.className = "bubble media";
    const name = m.file_name || m.mime_type || "file";
    if (item && item.preview) {
      box.appendChild(thumbnail(item.preview, name));
    } else {
      const label = document.createElement("span");
      label.textContent = `File: ${name}`;
      box.appendChild(label);
      if (frame && frame.id && frame.conversation_id && m.media_id) void fetchMedia(label, frame, name);
    }
    if (m.caption) {
      const caption = document.createElement("figcaption");
      caption.textContent = m.caption;
      box.appendChild(caption);
    }
    parent.appendChild(box);
  }

  function thumbnail(url: string, name: string): HTMLImageElement {
    const img = document.createElement("img");
    img.className = "thumbnail";
    img.src = url;
    img.alt = name;
    return img;
  }

  // Stored media come from the gateway with the visitor's token (never in the URL); images
  // become thumbnails, other files a download link. On failure the file name stays.
  async function fetchMedia(label: HTMLElement, frame: Json, name: string) {
    if (!session) return;
    const path = [frame.conversation_id, frame.id].map(encodeURIComponent).join("/");
    const response = await fetch(`${api}/media/${path}`, {
      headers: { Authorization: `Bearer ${session.token}` },
    }).catch(() => null);
    const blob = response && response.ok ? await response.blob().catch(() => null) : null;
    if (!blob || !label.isConnected) return;
    const url = track(URL.createObjectURL(blob));
    if (/^image\/(png|jpeg|gif|webp)$/.test(blob.type)) {
      // A reader at the end of the log stays there once the image has its height.
      const atEnd = log.scrollHeight - log.scrollTop - log.clientHeight < 40;
      const img = thumbnail(url, name);
      img.onload = () => atEnd && (log.scrollTop = log.scrollHeight);
      label.replaceWith(img);
    } else {
      const link = document.createElement("a");
      link.href = url;
      link.download = frame.content.media.file_name || "download";
      link.textContent = `Download ${name}`;
      label.replaceWith(link);
    }
  }

  function interactive(parent: HTMLElement, i: Json) {
    const box = bubble(parent, "");
    if (i.header) strong(box, i.header);
    box.appendChild(document.createTextNode(i.body || ""));
    const choices: { id: string; title: string; url?: string }[] = [];
    if (i.quick_replies) choices.push(...(i.quick_replies.quick_replies || []));
    if (i.buttons) choices.push(...(i.buttons.buttons || []));
    if (i.list) for (const s of i.list.sections || []) choices.push(...(s.rows || []));
    const cards: Json[] = i.card ? [i.card] : i.carousel ? i.carousel.cards || [] : [];
    for (const c of cards) {
      const card = document.createElement("div");
      card.className = "card";
      if (c.image_url) {
        const img = document.createElement("img");
        img.src = c.image_url;
        img.alt = c.title || "";
        card.appendChild(img);
      }
      strong(card, c.title || "");
      if (c.subtitle) card.appendChild(document.createTextNode(c.subtitle));
      buttons(card, c.buttons || [], !!i.quick_replies);
      parent.appendChild(card);
    }
    buttons(parent, choices, !!i.quick_replies);
    if (i.footer) bubble(parent, i.footer).className = "footer";
  }

  function strong(parent: HTMLElement, text: string) {
    const el = document.createElement("strong");
    el.textContent = text;
    parent.appendChild(el);
  }

  function buttons(parent: HTMLElement, choices: { id: string; title: string; url?: string }[], once: boolean) {
    if (!choices.length) return;
    const group = document.createElement("div");
    group.className = "choices";
    group.setAttribute("role", "group");
    group.setAttribute("aria-label", "Choices");
    for (const choice of choices) {
      const button = document.createElement("button");
      button.type = "button";
      button.className = "choice";
      button.textContent = choice.title;
      button.addEventListener("click", () => {
        if (choice.url) {
          window.open(choice.url, "_blank", "noopener");
          return;
        }
        if (once) group.remove(); // quick replies go once one is chosen
        queue({ client_id: newId(), text: "", choice: { id: choice.id, title: choice.title } });
      });
      group.appendChild(button);
    }
    parent.appendChild(group);
  }

  function CSS(): string {
    return `:host{all:initial;font:14px/1.4 system-ui,sans-serif;color:#1d1d1f}
.launcher{position:fixed;right:20px;bottom:20px;width:56px;height:56px;border-radius:50%;border:0;background:#2456d6;color:#fff;display:grid;place-items:center;cursor:pointer;box-shadow:0 4px 14px #0003;z-index:2147483646}
.panel{position:fixed;right:20px;bottom:88px;width:340px;max-width:calc(100vw - 40px);height:480px;max-height:calc(100vh - 120px);display:flex;flex-direction:column;background:#fff;border-radius:12px;box-shadow:0 8px 30px #0004;overflow:hidden;z-index:2147483647}
.panel[hidden]{display:none}
header{display:flex;align-items:center;gap:8px;padding:10px 12px;background:#2456d6;color:#fff}
.title{font-weight:600;flex:1}.state{font-size:12px;opacity:.85}
.close{background:none;border:0;color:#fff;font-size:20px;cursor:pointer}
.log{flex:1;overflow-y:auto;padding:12px;display:flex;flex-direction:column;gap:6px;background:#f6f7f9}
.msg{display:flex;flex-direction:column;max-width:80%}.msg.in{align-self:flex-end;align-items:flex-end}.msg.out{align-self:flex-start}
.bubble{margin:0;padding:8px 10px;border-radius:12px;background:#fff;white-space:pre-wrap;word-break:break-word;box-shadow:0 1px 2px #0001}
.in .bubble{background:#2456d6;color:#fff}.failed .bubble{background:#b3261e}
.bubble strong{display:block}.footer{font-size:12px;opacity:.7}
.tick{font-size:11px;color:#667}.tick.read{color:#2456d6}
.media{display:flex;flex-direction:column;gap:4px}.in .media{background:#e8edfb;color:#1d1d1f}.thumbnail{max-width:200px;max-height:160px;border-radius:8px}
.choices{display:flex;flex-wrap:wrap;gap:6px;margin-top:6px}
.choice{border:1px solid #2456d6;background:#fff;color:#2456d6;border-radius:16px;padding:4px 12px;cursor:pointer;font:inherit}
.choice:focus,.launcher:focus,.send:focus,.attach:focus,textarea:focus{outline:2px solid #f5a623;outline-offset:1px}
.card{background:#fff;border-radius:10px;padding:8px;margin-top:6px;display:flex;flex-direction:column;gap:4px}.card img{max-width:100%;border-radius:6px}
.note{align-self:center;font-size:12px;color:#667;margin:4px 0}
.typing{padding:2px 12px;font-size:12px;color:#667;background:#f6f7f9}
.composer{display:flex;gap:6px;padding:8px;border-top:1px solid #e3e5ea;align-items:flex-end}
textarea{flex:1;resize:none;border:1px solid #ccd;border-radius:8px;padding:6px 8px;font:inherit;max-height:96px}
.send,.attach{border:0;background:none;font-size:20px;cursor:pointer;color:#2456d6;padding:4px;display:grid;place-items:center}`;
  }

  for (const item of pending) showPending(item); // from before a reload: sent again on ready
  window.addEventListener("online", () => socket || connect());
  void connect();
})();
