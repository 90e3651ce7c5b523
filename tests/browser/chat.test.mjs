// The web client in headless Chromium against the running local stack (scripts/stack.sh
// test-browser, run by `make test`):
//   1. alice (gateway A) and bob (gateway B) sign in and chat across the two gateways; alice's
//      message turns from sent to read (✓✓) when bob opens it; bob sees "alice is typing…"
//      while she types, until her message comes;
//   2. bob reloads the page and sees the conversation's history, and scrolls back past its
//      first page; bob in a fresh browser (nothing stored) finds the conversation in his inbox,
//      with its last message;
//   3. alice makes a group with bob and carol (gateway A); the three exchange messages; alice
//      adds dave;
//   4. carol closes her page, alice writes, carol comes back: the message arrives on her new
//      connection (offline delivery) before she opens the group;
//   5. bob at phone width; alice sees bob online in her conversation with him (a dot in the
//      list, "online" in the header), and "last seen …" (list and header) once his page is
//      closed;
//   6. erin turns notifications on: the page subscribes with the server's VAPID key (Chromium's
//      own push service is not reachable here, so the subscription is one of the local Web Push
//      service) and registers the device; the service worker shows a payload as a
//      notification; with her page closed, alice's message reaches the local push service.
// Screenshots go to BROWSER_OUT (.local/browser-test). Any page error, console error or CSP
// violation fails the run.
import { mkdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const GW_A = process.env.GATEWAY_A || 'http://127.0.0.1:8080';
const GW_B = process.env.GATEWAY_B || 'http://127.0.0.1:8081';
const OUT = process.env.BROWSER_OUT || '.local/browser-test';
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const WAIT = Number(process.env.BROWSER_WAIT_MS || 20000);
const WEBPUSH = process.env.WEBPUSH || 'http://127.0.0.1:8095';

const run = Date.now().toString(36);
const alice = `alice_${run}`;
const bob = `bob_${run}`;
const carol = `carol_${run}`;
const dave = `dave_${run}`;
const erin = `erin_${run}`;
const dm = alice < bob ? `dm:${alice}:${bob}` : `dm:${bob}:${alice}`;
const groupName = `Trip ${run}`;

rmSync(OUT, { recursive: true, force: true });
mkdirSync(OUT, { recursive: true });

const problems = [];
let shots = 0;
const log = (text) => console.log(`[browser] ${text}`);

async function shot(page, name) {
  shots += 1;
  await page.screenshot({ path: join(OUT, `${String(shots).padStart(2, '0')}-${name}.png`), fullPage: true });
}

// A signed-in page of `user` on `gateway` (in `context`, or a new one).
async function signIn(browser, gateway, user, context = null) {
  context = context || await browser.newContext({ viewport: { width: 1100, height: 720 } });
  const page = await context.newPage();
  page.on('pageerror', (e) => problems.push(`${user}: page error: ${e.message}`));
  page.on('console', (m) => { if (m.type() === 'error') problems.push(`${user}: console: ${m.text()}`); });
  await page.goto(`${gateway}/`);
  await page.fill('#signin-user', user);
  await page.click('#signin-submit');
  await connected(page);
  return page;
}

const connected = (page) => page.locator('#status[data-state="connected"]').waitFor({ timeout: WAIT });

// Waits until the open conversation shows a message with this text.
const sees = (page, text) => page.locator('#message-list .msg', { hasText: text }).first().waitFor({ timeout: WAIT });

async function say(page, text) {
  await page.fill('#composer-input', text);
  await page.press('#composer-input', 'Enter');
  // Shown with its seq once accepted (a pending send has none).
  await page.locator('#message-list .msg[data-seq]', { hasText: text }).first().waitFor({ timeout: WAIT });
}

const conversationButton = (page, id) => page.locator(`#conversations button[data-conversation="${id}"]`);
const groupButton = (page) => page.locator('#conversations button[data-conversation^="group:"]', { hasText: groupName });

async function seqsOf(page) {
  return page.$$eval('#message-list .msg[data-seq]', (nodes) => nodes.map((n) => Number(n.dataset.seq)));
}

function check(cond, what) {
  if (!cond) throw new Error(what);
}

const browser = await chromium.launch({
  executablePath: CHROMIUM,
  headless: true,
  // As root on a machine with no internet: no sandbox, and none of Chromium's own calls home.
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
    '--disable-component-update', '--disable-sync', '--disable-dev-shm-usage'],
});

let failed = null;
try {
  // 1. Two users, two gateways.
  const a = await signIn(browser, GW_A, alice);
  const b = await signIn(browser, GW_B, bob);
  log(`${alice} on ${GW_A}, ${bob} on ${GW_B}: connected`);
  await shot(b, 'signed-in');

  await a.fill('#new-chat-user', bob);
  await a.press('#new-chat-user', 'Enter');
  await say(a, 'hello bob');
  const hello = a.locator('#message-list .msg', { hasText: 'hello bob' }).first();
  check(await hello.getAttribute('data-ticks') !== 'read', 'read before bob opened it');
  await conversationButton(b, dm).waitFor({ timeout: WAIT });
  await conversationButton(b, dm).locator('.badge', { hasText: '1' }).waitFor({ timeout: WAIT });
  await conversationButton(b, dm).click();
  await sees(b, 'hello bob');
  await a.locator('#message-list .msg[data-ticks="read"]', { hasText: 'hello bob' }).waitFor({ timeout: WAIT });
  check(await conversationButton(b, dm).locator('.badge').count() === 0, 'nothing unread once open');
  log('bob opened it: an unread badge before, ✓✓ on alice\'s side after');
  await say(b, 'hi alice, from the other gateway');
  await sees(a, 'hi alice, from the other gateway');
  check(await conversationButton(a, dm).locator('.badge').count() === 0, 'no badge on the open conversation');
  log('direct messages crossed the two gateways both ways');
  await shot(a, 'alice-dm');

  // 2. A reload: the conversation is still listed, and its history is there.
  await b.reload();
  await connected(b);
  await conversationButton(b, dm).click();
  await sees(b, 'hello bob');
  await sees(b, 'hi alice, from the other gateway');
  const seqs = await seqsOf(b);
  check(JSON.stringify(seqs) === JSON.stringify([1, 2]), `bob's history after reload: seqs ${seqs}`);
  log('bob reloaded and sees the history (seqs 1, 2)');
  await shot(b, 'bob-after-reload');

  // A fresh browser: nothing stored; the inbox lists the conversation with its last message.
  const fresh = await signIn(browser, GW_A, bob);
  await conversationButton(fresh, dm).locator('.preview', { hasText: 'You: hi alice, from the other gateway' }).waitFor({ timeout: WAIT });
  log('bob in a fresh browser finds the conversation in his inbox');
  await shot(fresh, 'bob-fresh-browser');
  await fresh.context().close();

  // Scrolling back: more than a page of history (50) after another reload.
  for (let i = 1; i <= 55; i += 1) {
    await a.fill('#composer-input', `burst ${i}`);
    await a.press('#composer-input', 'Enter');
  }
  await a.locator('#message-list .msg[data-seq="57"]').waitFor({ timeout: WAIT });
  await sees(b, 'burst 55');
  await b.reload();
  await connected(b);
  await conversationButton(b, dm).click();
  await sees(b, 'burst 55');
  check(await b.locator('#message-list .msg', { hasText: 'hello bob' }).count() === 0, 'the first page is the last 50 messages');
  await b.locator('#older').waitFor({ timeout: WAIT });
  await b.click('#older');
  await sees(b, 'hello bob');
  const all = await seqsOf(b);
  check(all.length === 57 && all.every((seq, i) => seq === i + 1), `after scrolling back: seqs ${all}`);
  log('bob scrolled back past the first page of history (57 messages)');

  // Typing: bob sees it while alice types, until her message comes.
  // (A connection passes on one typing a second per conversation: the burst's last went a
  // moment ago.)
  await a.waitForTimeout(1100);
  await a.fill('#composer-input', 'typing this');
  await b.locator('#chat-sub.typing', { hasText: `${alice} is typing…` }).waitFor({ timeout: WAIT });
  await shot(b, 'bob-sees-typing');
  await say(a, 'done typing');
  await sees(b, 'done typing');
  check(await b.locator('#chat-sub.typing').count() === 0, 'her message ends "typing…"');
  log('bob saw alice typing, until her message came');

  // 3. A group of three.
  const c = await signIn(browser, GW_A, carol);
  await a.click('#new-group summary');
  await a.fill('#new-group-name', groupName);
  await a.fill('#new-group-members', `${bob}, ${carol}`);
  await a.click('#new-group-submit');
  await a.locator('#chat-title', { hasText: groupName }).waitFor({ timeout: WAIT });
  await sees(a, 'You created the group');
  for (const page of [b, c]) {
    await groupButton(page).waitFor({ timeout: WAIT });
    await groupButton(page).click();
    await sees(page, 'created the group');
  }
  await say(a, 'hi all');
  await sees(b, 'hi all');
  await sees(c, 'hi all');
  await say(b, 'hey from bob');
  await sees(a, 'hey from bob');
  await sees(c, 'hey from bob');
  await say(c, 'yo from carol');
  await sees(a, 'yo from carol');
  await sees(b, 'yo from carol');
  log('the group of three exchanged messages');
  await a.fill('#add-member-user', dave);
  await a.press('#add-member-user', 'Enter');
  await a.locator(`#members li[data-member="${dave}"]`).waitFor({ timeout: WAIT });
  await sees(b, `added ${dave}`);
  log(`${alice} added ${dave}; bob saw the event`);
  await shot(a, 'group');
  await shot(c, 'group-carol');

  // 4. Offline delivery: carol's page is gone while alice writes.
  await c.context().close();
  await say(a, 'while you were away');
  const c2 = await signIn(browser, GW_A, carol);
  // Before the group is opened: unread in the list (the inbox and the new socket).
  await groupButton(c2).locator('.badge').waitFor({ timeout: WAIT });
  await groupButton(c2).click();
  await sees(c2, 'while you were away');
  await sees(c2, 'created the group'); // and the history before it
  await c2.locator(`#members li[data-member="${dave}"]`).waitFor({ timeout: WAIT });
  log('carol came back and got what was sent while she was away');
  await shot(c2, 'carol-back');

  // 5. Phone width: the list, then the conversation with a back button.
  await b.setViewportSize({ width: 390, height: 800 });
  await b.click('#back');
  await shot(b, 'phone-list');
  await groupButton(b).click();
  await sees(b, 'while you were away');
  check(await b.locator('#sidebar').isHidden(), 'at phone width the list hides while a conversation is open');
  await shot(b, 'phone-chat');
  log('phone width: list and conversation one at a time');

  // Presence: alice's conversation with bob shows him online, and last seen once he is gone.
  await conversationButton(a, dm).click();
  await a.locator('#chat-sub', { hasText: 'online' }).waitFor({ timeout: WAIT });
  await conversationButton(a, dm).locator('.presence.online').waitFor({ timeout: WAIT });
  await shot(a, 'alice-sees-bob-online');
  await b.context().close();
  await a.locator('#chat-sub', { hasText: 'last seen' }).waitFor({ timeout: WAIT });
  check(await conversationButton(a, dm).locator('.presence.online').count() === 0, 'no online dot once bob is gone');
  await conversationButton(a, dm).locator('.kind', { hasText: 'last seen' }).waitFor({ timeout: WAIT });
  log('alice saw bob online, then last seen once his page closed');
  await shot(a, 'alice-sees-bob-last-seen');

  // 6. Notifications.
  const post = async (url, body, headers = {}) => {
    const res = await fetch(url, { method: 'POST', headers: { 'content-type': 'application/json', ...headers }, body: JSON.stringify(body) });
    return res.json();
  };
  const { api } = await (await fetch(`${GW_A}/config.json`)).json();
  const { token } = await post(`${GW_A}/dev/token`, { user: erin });
  const vapid = await (await fetch(`${api}/v1/push/vapid`, { headers: { authorization: `Bearer ${token}` } })).json();
  const made = (await post(`${WEBPUSH}/subscribe`, { applicationServerKey: vapid.public_key, userVisibleOnly: 'true' })).data;
  const ctx = await browser.newContext({ viewport: { width: 1100, height: 720 }, permissions: ['notifications'] });
  await ctx.addInitScript((sub) => {
    let current = null;
    PushManager.prototype.subscribe = async function subscribe(options) {
      window.askedKey = btoa(String.fromCharCode(...new Uint8Array(options.applicationServerKey)));
      current = {
        endpoint: sub.endpoint,
        options,
        toJSON: () => ({ endpoint: sub.endpoint, expirationTime: null, keys: sub.keys }),
        unsubscribe: async () => { current = null; return true; },
      };
      return current;
    };
    PushManager.prototype.getSubscription = async function getSubscription() { return current; };
  }, { endpoint: made.endpoint, keys: made.keys });
  const e = await signIn(browser, GW_A, erin, ctx);
  await e.click('#notify');
  await e.locator('#notify[data-state="on"]').waitFor({ timeout: WAIT });
  const asked = (await e.evaluate(() => window.askedKey)).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
  check(asked === vapid.public_key, `subscribed with ${asked}, not the server's key ${vapid.public_key}`);
  log(`${erin} turned notifications on: subscribed with the server's VAPID key, device registered`);
  await shot(e, 'notifications-on');
  const worker = ctx.serviceWorkers()[0] || await ctx.waitForEvent('serviceworker', { timeout: WAIT });
  const shown = await worker.evaluate(async () => {
    await self.showPush({ conversation: 'dm:alice:erin', seq: 3, from: 'alice', preview: 'are you there?', unread: 2 });
    const all = await self.registration.getNotifications();
    return all.map((n) => ({ title: n.title, body: n.body, tag: n.tag }));
  });
  check(shown.some((n) => n.title === 'alice' && n.body === 'are you there? (2 unread)' && n.tag === 'dm:alice:erin'),
    `the service worker showed ${JSON.stringify(shown)}`);
  log('the service worker shows a payload as a notification, one per conversation');
  await ctx.close();
  await a.setViewportSize({ width: 1100, height: 720 });
  await a.fill('#new-chat-user', erin);
  await a.press('#new-chat-user', 'Enter');
  await say(a, 'ping erin');
  const deadline = Date.now() + WAIT;
  let pushed = [];
  while (Date.now() < deadline) {
    pushed = ((await post(`${WEBPUSH}/get-notifications`, { clientHash: made.clientHash })).data?.messages || []).map((m) => JSON.parse(m));
    if (pushed.some((p) => p.preview === 'ping erin')) break;
    await new Promise((r) => setTimeout(r, 200));
  }
  check(pushed.some((p) => p.preview === 'ping erin' && p.from === alice), `the push service got ${JSON.stringify(pushed)}`);
  log(`with her page closed, alice's message reached ${erin}'s subscription at the push service`);
} catch (e) {
  failed = e;
}

for (const context of browser.contexts()) {
  for (const page of context.pages()) await page.screenshot({ path: join(OUT, `last-${shots++}.png`) }).catch(() => {});
}
await browser.close();
if (problems.length) {
  console.error(`[browser] the pages reported problems:\n  ${problems.join('\n  ')}`);
}
if (failed || problems.length) {
  if (failed) console.error(`[browser] FAILED: ${failed.stack || failed}`);
  console.error(`[browser] screenshots in ${OUT}`);
  process.exit(1);
}
log(`passed; screenshots in ${OUT}`);
