// Connect Chat's service worker (PROTOCOL.md "Push notifications"): a push that comes while no
// page of this device is connected is shown as a notification, one per conversation (a newer
// one replaces it), and a click on it opens that conversation.
'use strict';

// The notification of a push payload {conversation, seq, from, preview, unread, group?}.
function notificationOf(p) {
  const title = p.group ? `${p.from || 'Someone'} in a group` : (p.from || 'Connect Chat');
  const unread = Number(p.unread) > 1 ? ` (${p.unread} unread)` : '';
  return {
    title,
    options: {
      body: `${p.preview || 'New message'}${unread}`,
      tag: p.conversation || 'connect',
      renotify: true,
      data: p,
    },
  };
}

// Shows a payload; the page test calls it too (a push event cannot be made outside the browser).
self.showPush = async (payload) => {
  const { title, options } = notificationOf(payload || {});
  await self.registration.showNotification(title, options);
};

self.addEventListener('install', () => self.skipWaiting());
self.addEventListener('activate', (event) => event.waitUntil(self.clients.claim()));

self.addEventListener('push', (event) => {
  let payload = {};
  try { payload = event.data ? event.data.json() : {}; } catch { /* not JSON: a plain notification */ }
  event.waitUntil(self.showPush(payload));
});

self.addEventListener('notificationclick', (event) => {
  event.notification.close();
  const conversation = event.notification.data?.conversation;
  event.waitUntil((async () => {
    const pages = await self.clients.matchAll({ type: 'window', includeUncontrolled: true });
    for (const page of pages) {
      await page.focus();
      if (conversation) page.postMessage({ open: conversation });
      return;
    }
    await self.clients.openWindow(conversation ? `/#${encodeURIComponent(conversation)}` : '/');
  })());
});
