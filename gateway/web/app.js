// Connect Chat's web client. Plain JavaScript, no build step, no dependencies.
//
// It speaks the client contract (docs/PROTOCOL.md):
// - the WebSocket `/ws` of the gateway that served this page (`?token=`, `?device=`);
// - the HTTP API named by `/config.json` (the inbox, history, receipts, groups), with
//   `Authorization: Bearer`.
//
// What it keeps: per conversation, the messages it holds by `seq` (a repeat is dropped: delivery
// is at least once), the highest seq it holds without a gap (`contig`), the newest seq it knows
// of (`head`), the user's read marker (`read`; unread = head − read, as the inbox counts it) and
// the other members' markers (`receipts`, for the ✓ / ✓✓ on the user's own messages). The list
// of conversations comes from the inbox on every `hello`, so a new browser shows them all. It
// sends `read` only for what it has shown: the open conversation, while the page is visible
// (a read also acks for this device). Sends wait in
// `pending` until `accepted`; after a reconnect, or an `unavailable` / `rate_limited` answer, they
// go again with the same id (the server never stores a message twice). On every `hello` it
// catches up from history after the last seq it holds, for each conversation it has loaded.
// While the user types it says `typing` (at most every 3 s; `stop` when the composer is
// emptied), and it shows who is typing in the open conversation's header and in the list, for
// 6 s unless repeated, stopped, or ended by that user's message. It watches the peers of its
// direct conversations (`watch`, sent again when that list changes and on every `hello`) and
// shows each one's presence: a dot (online) or "last seen …" in the list, "online" / "last
// seen …" in the header.
'use strict';

const ID_RE = /^[A-Za-z0-9_.-]{1,64}$/;
const CONVERSATION_RE = /^(dm:[A-Za-z0-9_.-]{1,64}:[A-Za-z0-9_.-]{1,64}|group:[A-Za-z0-9_.-]{1,64})$/;
const MAX_BODY_BYTES = 16 * 1024;
const PAGE = 50;
const RETRY_CODES = new Set(['unavailable', 'rate_limited']);
// Groups up to this size show ticks (their members' receipts come live: PROTOCOL.md).
const TICKS_MAX_MEMBERS = 32;

const $ = (id) => document.getElementById(id);
const h = (tag, attrs = {}, ...children) => {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'class') node.className = v;
    else if (k.startsWith('on')) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? '' : v);
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
};

const state = {
  cfg: { api: '', devSignIn: false },
  session: null,        // { user, device, token, exp }
  ws: null,
  connected: false,
  attempt: 0,           // reconnect attempts since the last hello
  reconnectTimer: 0,
  convs: new Map(),     // conversation id -> Conv
  groups: new Map(),    // group id -> { group, name, owner, members }
  active: null,         // open conversation id
  pending: new Map(),   // client message id -> { frame, conversation, body, state, error, tries, timer }
  counter: 0,
  typing: new Map(),    // conversation id -> Map(user -> timer): who is typing there now
  typed: new Map(),     // conversation id -> when this page last said it types there (ms)
  presence: new Map(),  // user -> { online, last_seen } (a `presence` frame), for the direct peers
  watching: '',         // the watch list last sent on this connection (sorted, comma-joined)
  hidden: new Set(),    // peers answered `hidden` (no message yet): watched again after one
};

// A page watches the peers of its direct conversations (PROTOCOL.md "Presence": at most 256).
const WATCH_MAX = 256;

// A `typing` is shown this long unless repeated, stopped, or followed by that user's message
// (PROTOCOL.md); this page says it again at most this often while the user types.
const TYPING_SHOWN_MS = 6000;
const TYPING_EVERY_MS = 3000;

// ---- conversations ---------------------------------------------------------------------

const dmOf = (a, b) => (a < b ? `dm:${a}:${b}` : `dm:${b}:${a}`);

function conv(id) {
  let c = state.convs.get(id);
  if (!c) {
    const group = id.startsWith('group:') ? id.slice(6) : null;
    const peer = id.startsWith('dm:') ? id.split(':').slice(1).find((u) => u !== state.session.user) || state.session.user : null;
    c = { id, group, peer, msgs: new Map(), holes: new Set(), base: null, contig: 0, acked: 0, head: 0, read: 0, receipts: new Map(), preview: null, loaded: false, hasOlder: false, last: 0, busy: null };
    state.convs.set(id, c);
  }
  return c;
}

const unread = (c) => Math.max(0, c.head - c.read);

// The newest message known of a conversation (live, sent, from history or from the inbox).
function seen(c, m) {
  c.head = Math.max(c.head, m.seq);
  c.last = Math.max(c.last, m.ts || 0);
  if (!c.preview || m.seq >= c.preview.seq) c.preview = m;
  if (m.from === state.session.user && !m.event) c.read = Math.max(c.read, m.seq); // a send reads
}

function title(c) {
  if (c.group) return state.groups.get(c.group)?.name || c.group;
  return c.peer;
}

// Adds a message (a live frame, an `accepted` send or a history item); false for a repeat.
function addMessage(m) {
  const c = conv(m.conversation);
  // A peer is watchable once the conversation has a message: the next render watches again.
  if (c.peer && state.hidden.delete(c.peer)) state.watching = '';
  if (c.msgs.has(m.seq)) return false;
  c.msgs.set(m.seq, m);
  seen(c, m);
  if (c.base === null) c.base = m.seq - 1;
  if (m.seq <= c.base) c.base = m.seq - 1;
  advance(c);
  if (m.event) onGroupEvent(m);
  return true;
}

// Moves `contig` over every seq held without a gap; a gap is filled from history.
function advance(c) {
  if (c.contig < c.base) c.contig = c.base;
  while (c.msgs.has(c.contig + 1) || c.holes.has(c.contig + 1)) c.contig += 1;
  const top = Math.max(...c.msgs.keys());
  if (top > c.contig && state.connected) fill(c);
}

// Takes a history page. A seq the page skips does not exist (the server may leave a gap after a
// crash): it becomes a hole, so that it does not hold the acks back for good.
function takePage(c, messages, after, below) {
  let expect = after === undefined ? null : after + 1;
  for (const m of messages) {
    if (expect !== null) for (let s = expect; s < m.seq; s += 1) c.holes.add(s);
    addMessage(m);
    expect = m.seq + 1;
  }
  if (below !== undefined && expect !== null) for (let s = expect; s < below; s += 1) c.holes.add(s);
  advance(c);
}

// ---- HTTP API --------------------------------------------------------------------------

async function api(method, path, body) {
  const res = await fetch(state.cfg.api + path, {
    method,
    headers: { authorization: `Bearer ${state.session.token}`, ...(body ? { 'content-type': 'application/json' } : {}) },
    body: body ? JSON.stringify(body) : undefined,
  });
  const text = await res.text();
  let json = null;
  try { json = text ? JSON.parse(text) : null; } catch { /* not JSON */ }
  if (!res.ok) {
    const e = new Error(json?.error?.message || `${res.status} ${res.statusText}`);
    e.code = json?.error?.code || String(res.status);
    e.status = res.status;
    throw e;
  }
  return json;
}

const historyPath = (c, query) => `/v1/conversations/${c.id}/messages?${new URLSearchParams(query)}`;

// One history call at a time per conversation.
function serial(c, job) {
  const run = (c.busy || Promise.resolve()).then(job, job);
  c.busy = run.catch(() => {});
  return run;
}

// The last page of a conversation, the first time it is opened.
function loadLatest(c) {
  return serial(c, async () => {
    if (c.loaded) return;
    try {
      const page = await api('GET', historyPath(c, { limit: PAGE }));
      takePage(c, page.messages, page.messages.length ? page.messages[0].seq - 1 : undefined);
      c.loaded = true;
      c.hasOlder = page.has_more;
      if (page.messages.length) c.base = Math.min(c.base ?? Infinity, page.messages[0].seq - 1);
      else c.base = c.base ?? 0;
      advance(c);
    } catch (e) {
      if (e.status === 403 || e.status === 404) c.loaded = true; // not a member (any more)
      else showError('chat-error', `history: ${e.message}`);
    }
    render();
  });
}

// Everything after the last seq held without a gap (a reconnect, or a gap seen live).
function fill(c) {
  if (c.filling) return;
  c.filling = true;
  serial(c, async () => {
    try {
      for (let more = true; more;) {
        const page = await api('GET', historyPath(c, { after: c.contig, limit: 100 }));
        takePage(c, page.messages, c.contig);
        more = page.has_more && page.messages.length > 0;
        if (!page.messages.length) break;
      }
    } catch (e) {
      if (e.status !== 403) showError('chat-error', `catching up: ${e.message}`);
    } finally {
      c.filling = false;
    }
    render();
  });
}

// Scrolling back: the page below the lowest seq held.
function loadOlder(c) {
  return serial(c, async () => {
    const low = Math.min(...c.msgs.keys());
    if (!Number.isFinite(low) || low <= 1) { c.hasOlder = false; return; }
    const list = $('messages');
    const fromBottom = list.scrollHeight - list.scrollTop;
    try {
      const page = await api('GET', historyPath(c, { before: low, limit: PAGE }));
      takePage(c, page.messages, page.messages.length ? page.messages[0].seq - 1 : undefined, low);
      c.hasOlder = page.has_more;
    } catch (e) {
      showError('chat-error', `history: ${e.message}`);
    }
    render();
    list.scrollTop = list.scrollHeight - fromBottom;
  });
}

// The inbox: every conversation of the user, newest first, with its last message and the
// user's read marker (up to 20 pages of 100).
async function refreshInbox() {
  try {
    let cursor = null;
    for (let pages = 0; pages < 20; pages += 1) {
      const query = new URLSearchParams({ limit: 100 });
      if (cursor) query.set('cursor', cursor);
      const page = await api('GET', `/v1/conversations?${query}`);
      for (const item of page.conversations) {
        const c = conv(item.conversation);
        if (item.group && !state.groups.has(item.group)) state.groups.set(item.group, { group: item.group, name: item.name });
        if (item.last) seen(c, item.last);
        c.read = Math.max(c.read, item.read);
      }
      cursor = page.next;
      if (!cursor) break;
    }
    render();
  } catch (e) {
    showError('sidebar-error', `inbox: ${e.message}`);
  }
}

// The other members' markers in a conversation, for the ticks on the user's own messages.
async function loadReceipts(c) {
  try {
    const { receipts } = await api('GET', `/v1/conversations/${c.id}/receipts?limit=1000`);
    for (const r of receipts) takeReceipt(c, r);
    render();
  } catch (e) {
    if (e.status !== 403) showError('chat-error', `receipts: ${e.message}`);
  }
}

function takeReceipt(c, r) {
  if (r.user === state.session.user) { c.read = Math.max(c.read, r.read); return; }
  const old = c.receipts.get(r.user) || { read: 0, delivered: 0 };
  c.receipts.set(r.user, { read: Math.max(old.read, r.read), delivered: Math.max(old.delivered, r.delivered) });
}

// ✓ once every other member's device has it, ✓✓ once every other member has read it; none in a
// group too large for live receipts, or whose members are not loaded yet.
function tick(c, seq) {
  let others;
  if (c.peer) others = [c.peer];
  else {
    const members = state.groups.get(c.group)?.members;
    if (!members || members.length > TICKS_MAX_MEMBERS) return '';
    others = members.filter((u) => u !== state.session.user);
  }
  if (!others.length) return '';
  const marks = others.map((u) => c.receipts.get(u) || { read: 0, delivered: 0 });
  if (marks.every((m) => m.read >= seq)) return 'read';
  if (marks.every((m) => m.delivered >= seq)) return 'delivered';
  return '';
}

// The list has each group's id, name and owner; its members come with the group itself.
async function refreshGroups() {
  try {
    const { groups } = await api('GET', '/v1/groups');
    const old = new Map(state.groups);
    state.groups.clear();
    for (const g of groups) {
      state.groups.set(g.group, { ...g, members: old.get(g.group)?.members });
      conv(`group:${g.group}`);
    }
    const open = state.convs.get(state.active);
    if (open?.group && state.groups.has(open.group)) await loadGroup(open.group);
    render();
  } catch (e) {
    showError('sidebar-error', `groups: ${e.message}`);
  }
}

async function loadGroup(id) {
  try {
    const g = await api('GET', `/v1/groups/${id}`);
    state.groups.set(g.group, g);
  } catch (e) {
    if (e.status === 403 || e.status === 404) state.groups.delete(id);
    else showError('chat-error', `group: ${e.message}`);
  }
  render();
}

function onGroupEvent(m) {
  const g = state.groups.get(m.group);
  if (!g || m.event.kind === 'group_created') { scheduleGroups(); return; }
  const members = new Set(g.members || []);
  if (m.event.kind === 'member_added') members.add(m.event.user);
  if (m.event.kind === 'member_removed') members.delete(m.event.user);
  g.members = [...members].sort();
  if (m.event.kind === 'member_removed' && m.event.user === state.session.user) g.left = true;
}

let groupsTimer = 0;
function scheduleGroups() {
  clearTimeout(groupsTimer);
  groupsTimer = setTimeout(refreshGroups, 150);
}

// ---- WebSocket -------------------------------------------------------------------------

function connect() {
  clearTimeout(state.reconnectTimer);
  if (tokenExpired()) { renewToken().then((ok) => (ok ? connect() : signOut('Your sign-in has expired.'))); return; }
  const query = new URLSearchParams({ token: state.session.token });
  if (state.session.device) query.set('device', state.session.device);
  const ws = new WebSocket(`${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/ws?${query}`);
  state.ws = ws;
  setStatus('connecting', 'connecting…');
  ws.onmessage = (ev) => {
    let f;
    try { f = JSON.parse(ev.data); } catch { return; }
    onFrame(f);
  };
  ws.onclose = (ev) => {
    if (state.ws !== ws) return;
    state.ws = null;
    state.connected = false;
    if (ev.code === 1008 && tokenExpired()) { connect(); return; }
    const delay = Math.min(30000, 500 * 2 ** state.attempt) * (0.5 + Math.random() / 2);
    state.attempt += 1;
    setStatus('offline', `offline, reconnecting in ${Math.ceil(delay / 1000)} s`);
    state.reconnectTimer = setTimeout(connect, delay);
  };
}

function onFrame(f) {
  switch (f.type) {
    case 'hello':
      state.connected = true;
      state.watching = ''; // a new connection watches nobody yet
      state.attempt = 0;
      setStatus('connected', 'connected');
      $('status').title = `gateway ${f.gateway}, session ${f.session}`;
      refreshGroups();
      refreshInbox();
      for (const c of state.convs.values()) if (c.loaded) fill(c);
      if (state.active) loadReceipts(conv(state.active));
      for (const id of state.pending.keys()) transmit(id);
      break;
    case 'accepted': {
      const p = state.pending.get(f.id);
      if (!p) break;
      clearTimeout(p.timer);
      state.pending.delete(f.id);
      addMessage({ conversation: f.conversation, seq: f.seq, from: state.session.user, id: f.id, body: p.body, ts: f.ts, group: p.frame.group });
      render();
      break;
    }
    case 'message':
      stopTyping(f.conversation, f.from);
      if (addMessage(f)) render();
      break;
    case 'typing':
      if (f.stop) stopTyping(f.conversation, f.user);
      else startTyping(f.conversation, f.user);
      render();
      break;
    case 'receipt':
      takeReceipt(conv(f.conversation), f);
      render();
      break;
    case 'presence':
      if (f.hidden) { state.presence.delete(f.user); state.hidden.add(f.user); } else state.presence.set(f.user, { online: f.online, last_seen: f.last_seen });
      render();
      break;
    case 'error': {
      const p = f.id && state.pending.get(f.id);
      if (!p) { showError('chat-error', `${f.code}: ${f.message}`); break; }
      if (RETRY_CODES.has(f.code)) {
        p.tries += 1;
        clearTimeout(p.timer);
        p.timer = setTimeout(() => transmit(f.id), Math.min(10000, 250 * 2 ** p.tries));
      } else {
        p.state = 'failed';
        p.error = `${f.code}: ${f.message}`;
        render();
      }
      break;
    }
    default:
      break;
  }
}

function transmit(id) {
  const p = state.pending.get(id);
  if (!p || p.state === 'failed' || !state.connected) return;
  state.ws.send(JSON.stringify(p.frame));
}

// ---- presence --------------------------------------------------------------------------

// Watches the peers of the direct conversations (the most recent first), when that list
// changed since it was last sent on this connection.
function syncWatch() {
  if (!state.connected) return;
  const peers = [...new Set(ordered().filter((c) => c.peer && c.peer !== state.session.user).map((c) => c.peer))]
    .slice(0, WATCH_MAX).sort();
  const list = peers.join(',');
  if (list === state.watching) return;
  state.watching = list;
  state.ws.send(JSON.stringify({ type: 'watch', users: peers }));
}

// "online", "last seen 5 min ago", "" (not known).
function presenceText(user) {
  const p = user && state.presence.get(user);
  if (!p) return '';
  if (p.online) return 'online';
  if (!p.last_seen) return 'offline';
  const ago = Math.max(0, Date.now() - p.last_seen);
  if (ago < 60000) return 'last seen just now';
  if (ago < 3600000) return `last seen ${Math.floor(ago / 60000)} min ago`;
  const at = new Date(p.last_seen);
  return ago < 86400000 ? `last seen at ${at.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' })}` : `last seen ${at.toLocaleDateString()}`;
}

// ---- typing ----------------------------------------------------------------------------

function startTyping(conversation, user) {
  let who = state.typing.get(conversation);
  if (!who) { who = new Map(); state.typing.set(conversation, who); }
  clearTimeout(who.get(user));
  who.set(user, setTimeout(() => { stopTyping(conversation, user); render(); }, TYPING_SHOWN_MS));
}

function stopTyping(conversation, user) {
  const who = state.typing.get(conversation);
  if (!who || !who.has(user)) return;
  clearTimeout(who.get(user));
  who.delete(user);
  if (!who.size) state.typing.delete(conversation);
}

// "bob is typing…", "bob and carol are typing…" (empty: nobody).
function typingText(conversation) {
  const who = [...(state.typing.get(conversation)?.keys() || [])];
  if (!who.length) return '';
  return who.length === 1 ? `${who[0]} is typing…` : `${who.slice(0, -1).join(', ')} and ${who.at(-1)} are typing…`;
}

// The composer changed: say so (at most every few seconds), or that the user stopped.
function composing(text) {
  const id = state.active;
  if (!id || !state.connected) return;
  const last = state.typed.get(id);
  if (text.trim()) {
    if (last && Date.now() - last < TYPING_EVERY_MS) return;
    state.typed.set(id, Date.now());
    state.ws.send(JSON.stringify({ type: 'typing', conversation: id }));
  } else if (last) {
    state.typed.delete(id);
    state.ws.send(JSON.stringify({ type: 'typing', conversation: id, stop: true }));
  }
}

function send(text) {
  const c = state.convs.get(state.active);
  if (!c || !text.trim()) return;
  state.typed.delete(c.id); // the message itself ends the peers' "typing…"
  if (new TextEncoder().encode(text).length > MAX_BODY_BYTES) { showError('chat-error', 'too_large: a message is at most 16 KiB'); return; }
  state.counter += 1;
  const id = `web-${state.session.device || 'default'}-${Date.now().toString(36)}-${state.counter}`;
  const frame = c.group ? { type: 'send', id, group: c.group, body: text } : { type: 'send', id, to: c.peer, body: text };
  state.pending.set(id, { frame, conversation: c.id, body: text, state: 'sending', tries: 0, timer: 0 });
  transmit(id);
  render();
}

// Marks what is shown as read (which also acks it for this device): the open conversation, up
// to the last seq held without a gap. A group the user has left can no longer be read: acked.
function ackShown() {
  const c = state.convs.get(state.active);
  if (!c || !state.connected || document.visibilityState !== 'visible') return;
  if (c.contig > c.acked) {
    c.acked = c.contig;
    const left = c.group && state.groups.get(c.group)?.left;
    if (!left) c.read = Math.max(c.read, c.contig);
    state.ws.send(JSON.stringify({ type: left ? 'ack' : 'read', conversation: c.id, seq: c.contig }));
  }
}

// ---- sign-in ---------------------------------------------------------------------------

function tokenExpired() {
  return state.session.exp && state.session.exp * 1000 < Date.now() + 5000;
}

function expOf(token) {
  try {
    const payload = JSON.parse(atob(token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/')));
    return { user: payload.sub, exp: payload.exp };
  } catch {
    return {};
  }
}

async function devToken(user) {
  const res = await fetch('/dev/token', { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ user }) });
  const json = await res.json().catch(() => null);
  if (!res.ok) throw new Error(json?.error?.message || `${res.status}`);
  return json;
}

async function renewToken() {
  if (!state.cfg.devSignIn) return false;
  try {
    const t = await devToken(state.session.user);
    Object.assign(state.session, { token: t.token, exp: t.exp });
    sessionStorage.setItem('connect.session', JSON.stringify(state.session));
    return true;
  } catch {
    return false;
  }
}

async function signIn(ev) {
  ev.preventDefault();
  showError('signin-error', '');
  const device = $('signin-device').value.trim();
  if (device && !ID_RE.test(device)) { showError('signin-error', 'A device id is 1–64 characters from A–Z a–z 0–9 _ . -'); return; }
  try {
    let session;
    if (state.cfg.devSignIn) {
      const user = $('signin-user').value.trim();
      if (!ID_RE.test(user)) { showError('signin-error', 'A user id is 1–64 characters from A–Z a–z 0–9 _ . -'); return; }
      const t = await devToken(user);
      session = { user: t.user, token: t.token, exp: t.exp, device };
    } else {
      const token = $('signin-token').value.trim();
      const { user, exp } = expOf(token);
      if (!user) { showError('signin-error', 'That is not a token.'); return; }
      session = { user, token, exp, device };
    }
    sessionStorage.setItem('connect.session', JSON.stringify(session));
    start(session);
  } catch (e) {
    showError('signin-error', `Sign-in refused: ${e.message}`);
  }
}

function signOut(reason = '') {
  sessionStorage.removeItem('connect.session');
  if (state.ws) { const ws = state.ws; state.ws = null; ws.close(1000); }
  clearTimeout(state.reconnectTimer);
  Object.assign(state, { session: null, connected: false, active: null, attempt: 0 });
  state.convs.clear(); state.groups.clear(); state.pending.clear();
  $('app').hidden = true;
  $('signin').hidden = false;
  showError('signin-error', reason);
}

function start(session) {
  state.session = session;
  $('signin').hidden = true;
  $('app').hidden = false;
  $('me-name').textContent = session.device ? `${session.user} · ${session.device}` : session.user;
  render();
  connect();
  showNotifyState();
  // A notification clicked (sw.js) or a link to one conversation.
  const linked = decodeURIComponent(location.hash.slice(1));
  if (CONVERSATION_RE.test(linked)) openConversation(linked);
}

// ---- push notifications --------------------------------------------------------------
// With the browser's consent ("Notify me"), this device is registered for Web Push
// (PROTOCOL.md "Push notifications"): while none of its pages is connected, a message to its
// user comes as a notification, which the service worker (/sw.js) shows.

const pushOffered = () => 'serviceWorker' in navigator && 'PushManager' in window && 'Notification' in window;
const deviceId = () => state.session?.device || 'default';

function keyBytes(b64url) {
  const b64 = b64url.replace(/-/g, '+').replace(/_/g, '/').padEnd(Math.ceil(b64url.length / 4) * 4, '=');
  return Uint8Array.from(atob(b64), (ch) => ch.charCodeAt(0));
}

function renderNotify(on) {
  const button = $('notify');
  button.hidden = !pushOffered();
  button.dataset.state = on ? 'on' : 'off';
  button.textContent = on ? 'Notifications on' : 'Notify me';
}

async function pushSubscription() {
  const reg = await navigator.serviceWorker.register('/sw.js');
  await navigator.serviceWorker.ready;
  return { reg, sub: await reg.pushManager.getSubscription() };
}

async function enablePush() {
  if (await Notification.requestPermission() !== 'granted') throw new Error('notifications are blocked for this site');
  const { reg, sub: old } = await pushSubscription();
  const { public_key: key } = await api('GET', '/v1/push/vapid');
  let sub = old;
  // A subscription made for another server key (a key rotation) cannot be pushed to.
  const current = old?.options?.applicationServerKey ? new Uint8Array(old.options.applicationServerKey) : null;
  const want = keyBytes(key);
  if (sub && current && !(current.length === want.length && current.every((b, i) => b === want[i]))) {
    await sub.unsubscribe();
    sub = null;
  }
  if (!sub) sub = await reg.pushManager.subscribe({ userVisibleOnly: true, applicationServerKey: want });
  await api('PUT', `/v1/devices/${encodeURIComponent(deviceId())}/push`, { kind: 'webpush', ...sub.toJSON() });
}

async function disablePush() {
  await api('DELETE', `/v1/devices/${encodeURIComponent(deviceId())}/push`);
  const { sub } = await pushSubscription();
  if (sub) await sub.unsubscribe();
}

async function toggleNotify() {
  const on = $('notify').dataset.state === 'on';
  showError('sidebar-error', '');
  try {
    if (on) await disablePush(); else await enablePush();
    renderNotify(!on);
  } catch (e) {
    showError('sidebar-error', `Notifications: ${e.message}`);
  }
}

// Whether this device is registered already (a subscription and the permission).
async function showNotifyState() {
  if (!pushOffered()) { renderNotify(false); return; }
  let on = false;
  try {
    const reg = await navigator.serviceWorker.getRegistration('/');
    on = Notification.permission === 'granted' && Boolean(await reg?.pushManager.getSubscription());
  } catch { /* none */ }
  renderNotify(on);
}

// ---- rendering -------------------------------------------------------------------------

function setStatus(s, text) {
  const node = $('status');
  node.dataset.state = s;
  node.textContent = text;
}

function showError(id, text) {
  $(id).textContent = text;
  if (text) setTimeout(() => { if ($(id).textContent === text) $(id).textContent = ''; }, 8000);
}

const time = (ts) => (ts ? new Date(ts).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' }) : '');

function eventText(m) {
  const who = m.from === state.session.user ? 'You' : m.from;
  switch (m.event.kind) {
    case 'group_created': return `${who} created the group`;
    case 'member_added': return `${who} added ${m.event.user}`;
    case 'member_removed': return m.event.user === m.from ? `${m.from} left` : `${who} removed ${m.event.user}`;
    default: return `${who}: ${m.event.kind}`;
  }
}

function renderMessage(m, extra = '', c = null) {
  if (m.event) return h('li', { class: 'msg event', 'data-seq': m.seq }, eventText(m));
  const mine = m.from === state.session.user;
  const ticks = mine && c && m.seq ? tick(c, m.seq) : '';
  return h('li', { class: `msg${mine ? ' mine' : ''}${extra}`, 'data-seq': m.seq, 'data-id': m.id, 'data-ticks': ticks || (mine && m.seq ? 'sent' : false) },
    h('span', { class: 'from' }, mine ? 'You' : m.from),
    h('span', { class: 'body' }, m.body),
    h('span', { class: 'time' }, time(m.ts)),
    ticks ? h('span', { class: `ticks ${ticks}`, 'aria-label': ticks }, ticks === 'read' ? '✓✓' : '✓') : '');
}

const previewText = (m) => (m ? (m.event ? eventText(m) : `${m.from === state.session.user ? 'You: ' : ''}${m.body}`) : '');

function openConversation(id) {
  state.active = id;
  const c = conv(id);
  $('app').classList.add('show-chat');
  render();
  if (c.group) loadGroup(c.group);
  loadReceipts(c);
  if (!c.loaded) loadLatest(c).then(() => { scrollToEnd(); ackShown(); });
  scrollToEnd();
  $('composer-input').focus();
}

function scrollToEnd() {
  const list = $('messages');
  list.scrollTop = list.scrollHeight;
}

function ordered() {
  return [...state.convs.values()].sort((a, b) => b.last - a.last || title(a).localeCompare(title(b)));
}

function render() {
  if (!state.session) return;
  syncWatch();
  ackShown(); // first: what is shown is read, so its badge goes with this render
  const list = $('conversations');
  list.replaceChildren(...ordered().map((c) => h('li', {},
    h('button', {
      type: 'button', role: 'option', 'data-conversation': c.id, 'aria-selected': String(c.id === state.active),
      onclick: () => openConversation(c.id),
    }, h('span', { class: 'entry' }, h('span', {}, c.peer && state.presence.get(c.peer)?.online ? h('span', { class: 'presence online', 'aria-label': 'online', title: 'online' }, '●') : '', title(c), h('span', { class: 'kind' }, c.group ? 'group' : presenceText(c.peer) === 'online' ? '' : presenceText(c.peer))),
      typingText(c.id) ? h('span', { class: 'preview typing' }, typingText(c.id)) : h('span', { class: 'preview' }, previewText(c.preview))),
    unread(c) ? h('span', { class: 'badge', 'aria-label': `${unread(c)} unread` }, unread(c)) : ''))));

  const c = state.convs.get(state.active);
  const group = c?.group ? state.groups.get(c.group) : null;
  $('chat-title').textContent = c ? title(c) : 'No conversation open';
  const members = group?.members || [];
  const typingNow = c ? typingText(c.id) : '';
  $('chat-sub').textContent = typingNow || (group ? (group.members ? `${members.length} members` : 'group') : (c ? presenceText(c.peer) || c.id : ''));
  $('chat-sub').classList.toggle('typing', Boolean(typingNow));
  $('group-panel').hidden = !group;
  if (group) {
    const owner = group.owner === state.session.user;
    $('members').replaceChildren(...members.map((u) => h('li', { 'data-member': u }, u,
      owner && u !== state.session.user ? h('button', { type: 'button', 'aria-label': `Remove ${u}`, onclick: () => removeMember(group.group, u) }, '×') : '')));
  }
  const usable = Boolean(c) && !(group && group.left);
  $('composer-input').disabled = !usable;
  $('send').disabled = !usable;
  $('empty').hidden = Boolean(c);
  $('older').hidden = !(c && c.loaded && c.hasOlder);

  const items = [];
  if (c) {
    for (const seq of [...c.msgs.keys()].sort((a, b) => a - b)) items.push(renderMessage(c.msgs.get(seq), '', c));
    for (const [id, p] of state.pending) {
      if (p.conversation !== c.id) continue;
      const li = renderMessage({ id, from: state.session.user, body: p.body }, p.state === 'failed' ? ' failed' : ' pending');
      li.querySelector('.time').textContent = p.state === 'failed' ? p.error : 'sending…';
      items.push(li);
    }
  }
  const box = $('messages');
  const atEnd = box.scrollHeight - box.scrollTop - box.clientHeight < 40;
  $('message-list').replaceChildren(...items);
  if (atEnd) scrollToEnd();
}

async function removeMember(group, user) {
  try {
    await api('DELETE', `/v1/groups/${group}/members/${user}`);
    await refreshGroups();
  } catch (e) {
    showError('chat-error', `remove: ${e.message}`);
  }
}

// ---- wiring ----------------------------------------------------------------------------

function wire() {
  $('signin-form').addEventListener('submit', signIn);
  $('signout').addEventListener('click', () => signOut());
  $('notify').addEventListener('click', toggleNotify);
  if ('serviceWorker' in navigator) {
    navigator.serviceWorker.addEventListener('message', (ev) => { if (CONVERSATION_RE.test(ev.data?.open || '')) openConversation(ev.data.open); });
  }
  $('back').addEventListener('click', () => { $('app').classList.remove('show-chat'); state.active = null; render(); });
  $('older').addEventListener('click', () => { const c = state.convs.get(state.active); if (c) loadOlder(c); });
  $('messages').addEventListener('scroll', () => {
    const c = state.convs.get(state.active);
    if (c && c.hasOlder && $('messages').scrollTop === 0) loadOlder(c);
  });
  $('new-chat').addEventListener('submit', (ev) => {
    ev.preventDefault();
    const user = $('new-chat-user').value.trim();
    if (!ID_RE.test(user)) { showError('sidebar-error', 'A user id is 1–64 characters from A–Z a–z 0–9 _ . -'); return; }
    $('new-chat-user').value = '';
    openConversation(dmOf(state.session.user, user));
  });
  $('new-group-form').addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const name = $('new-group-name').value.trim();
    const members = $('new-group-members').value.split(/[\s,]+/).filter(Boolean);
    const bad = members.find((u) => !ID_RE.test(u));
    if (bad) { showError('sidebar-error', `Not a user id: ${bad}`); return; }
    try {
      const g = await api('POST', '/v1/groups', { name, members });
      state.groups.set(g.group, g);
      $('new-group-form').reset();
      $('new-group').open = false;
      openConversation(`group:${g.group}`);
    } catch (e) {
      showError('sidebar-error', `New group: ${e.message}`);
    }
  });
  $('add-member').addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const c = state.convs.get(state.active);
    const user = $('add-member-user').value.trim();
    if (!c?.group || !ID_RE.test(user)) { showError('chat-error', 'A user id is 1–64 characters from A–Z a–z 0–9 _ . -'); return; }
    try {
      const g = await api('POST', `/v1/groups/${c.group}/members`, { user });
      state.groups.set(g.group, g);
      $('add-member-user').value = '';
      render();
    } catch (e) {
      showError('chat-error', `Add member: ${e.message}`);
    }
  });
  $('leave-group').addEventListener('click', () => {
    const c = state.convs.get(state.active);
    if (c?.group) removeMember(c.group, state.session.user);
  });
  $('composer').addEventListener('submit', (ev) => {
    ev.preventDefault();
    const input = $('composer-input');
    send(input.value);
    input.value = '';
  });
  $('composer-input').addEventListener('input', (ev) => composing(ev.target.value));
  $('composer-input').addEventListener('keydown', (ev) => {
    if (ev.key === 'Enter' && !ev.shiftKey && !ev.isComposing) { ev.preventDefault(); $('composer').requestSubmit(); }
  });
  document.addEventListener('keydown', (ev) => {
    if ((ev.ctrlKey || ev.metaKey) && ev.key === 'k') { ev.preventDefault(); $('new-chat-user').focus(); }
    if (ev.altKey && (ev.key === 'ArrowUp' || ev.key === 'ArrowDown')) {
      ev.preventDefault();
      const all = ordered();
      const at = all.findIndex((c) => c.id === state.active);
      const next = all[(at + (ev.key === 'ArrowDown' ? 1 : all.length - 1)) % all.length];
      if (next) openConversation(next.id);
    }
    if (ev.key === 'Escape' && $('app').classList.contains('show-chat')) $('back').click();
  });
  document.addEventListener('visibilitychange', ackShown);
}

async function main() {
  wire();
  try {
    const res = await fetch('/config.json');
    state.cfg = await res.json();
  } catch { /* no config: token sign-in, API on this origin */ }
  $('signin-dev').hidden = !state.cfg.devSignIn;
  $('signin-token-box').hidden = Boolean(state.cfg.devSignIn);
  $('signin-user').required = Boolean(state.cfg.devSignIn);
  let saved = null;
  try { saved = JSON.parse(sessionStorage.getItem('connect.session')); } catch { /* none */ }
  if (saved?.token && saved?.user) start(saved);
  else $('signin').hidden = false;
}

main();
