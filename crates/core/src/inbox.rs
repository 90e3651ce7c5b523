//! The inbox (`GET /v1/conversations`) and a conversation's receipts
//! (`GET /v1/conversations/{conversation}/receipts`).
//!
//! The inbox is read, not written per member: the caller's newest direct conversations (the
//! recency index, one page of it) and their groups (the membership index, then each group's
//! head, batched), side by side, merged newest first; then the page's last messages, its groups'
//! names, the caller's markers there and its direct conversations' heads (one batched read each,
//! side by side) and `unread = last.seq - read`. Paged by an opaque cursor: the place of the
//! last item given. A busy direct conversation's place lags its newest message by at most the
//! messaging step (`INBOX_PLACE_STEP_MS`): its item, read from its head, never does.

use std::collections::HashMap;

use base64::Engine;
use serde::Serialize;

use connect_protocol::{ConversationId, ErrorCode, GroupId, MessageFrame, UserId};

use crate::groups::GroupStore;
use crate::history::{whole_number, Range};
use crate::model::StoredMessage;
use crate::ports::{ChatStore, Head, HistoryStore, InboxIndex, ReadMarkers, Recency};
use crate::ApiError;

pub const DEFAULT_LIMIT: usize = 50;
pub const MAX_LIMIT: usize = 100;
pub const RECEIPTS_DEFAULT_LIMIT: usize = 100;
pub const RECEIPTS_MAX_LIMIT: usize = 1000;

fn bad(message: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::BadRequest, message)
}

/// `limit` within `1..=max` (absent: `default`).
pub(crate) fn limit(value: Option<&str>, default: usize, max: usize) -> Result<usize, ApiError> {
    match whole_number("limit", value)? {
        None => Ok(default),
        Some(l) if (1..=max as u64).contains(&l) => Ok(l as usize),
        Some(_) => Err(bad(format!("`limit` must be between 1 and {max}"))),
    }
}

/// Where an inbox page starts: after this place in newest-first order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor(pub Recency);

impl Cursor {
    pub fn encode(&self) -> String {
        let text = format!("{}|{}", self.0.ts, self.0.conversation);
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text)
    }

    pub fn decode(s: &str) -> Result<Self, ApiError> {
        let invalid = || bad("`cursor` is not one this server gave");
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(s)
            .map_err(|_| invalid())?;
        let text = String::from_utf8(bytes).map_err(|_| invalid())?;
        let (ts, conversation) = text.split_once('|').ok_or_else(invalid)?;
        ConversationId::parse(conversation).map_err(|_| invalid())?;
        Ok(Self(Recency {
            ts: ts.parse().map_err(|_| invalid())?,
            conversation: conversation.to_owned(),
        }))
    }
}

/// A parsed inbox request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    pub limit: usize,
    pub cursor: Option<Cursor>,
}

impl Query {
    pub fn parse<'a>(param: impl Fn(&str) -> Option<&'a str>) -> Result<Self, ApiError> {
        Ok(Self {
            limit: limit(param("limit"), DEFAULT_LIMIT, MAX_LIMIT)?,
            cursor: param("cursor").map(Cursor::decode).transpose()?,
        })
    }
}

/// One conversation of the inbox, as the contract shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Item {
    pub conversation: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub with: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub last: Option<MessageFrame>,
    pub read: u64,
    pub unread: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Page {
    pub conversations: Vec<Item>,
    pub next: Option<String>,
}

/// What the inbox reads.
pub struct InboxPorts<'a> {
    pub index: &'a dyn InboxIndex,
    pub markers: &'a dyn ReadMarkers,
    pub groups: &'a dyn GroupStore,
    pub chat: &'a dyn ChatStore,
    pub history: &'a dyn HistoryStore,
}

/// A conversation of the caller's, before its page is chosen.
struct Entry {
    conversation: ConversationId,
    /// Its id as text (the order's tie-break and the cursor's).
    name: String,
    head: Head,
    /// No head indexed (a group whose messages predate the index): its last message is read
    /// from history.
    unindexed: bool,
}

impl Entry {
    fn new(conversation: ConversationId, head: Head, unindexed: bool) -> Self {
        Self {
            name: conversation.to_string(),
            conversation,
            head,
            unindexed,
        }
    }
}

/// One page of `caller`'s inbox: the page's direct conversations come from the recency index
/// (at most `limit + 1` of them, whatever the caller has), merged with every group of theirs
/// (the membership index and each group's head): O(page + groups), never O(direct
/// conversations).
pub async fn read(
    ports: &InboxPorts<'_>,
    caller: &UserId,
    query: &Query,
) -> Result<Page, ApiError> {
    let after = query.cursor.as_ref().map(|c| &c.0);
    let (direct, groups) = tokio::join!(
        ports.index.recent(caller, after, query.limit + 1),
        group_entries(ports, caller)
    );
    let mut entries: Vec<Entry> = direct?
        .into_iter()
        .filter(|(c, _)| c.is_direct_member(caller))
        .map(|(c, head)| Entry::new(c, head, false))
        .chain(groups?)
        .filter(|e| after.is_none_or(|a| a.before(e.head.ts, &e.name)))
        .collect();
    entries.sort_by(|a, b| b.head.ts.cmp(&a.head.ts).then_with(|| a.name.cmp(&b.name)));
    let more = entries.len() > query.limit;
    entries.truncate(query.limit);
    // Where the next page starts: this page's place in the order it was chosen by.
    let next = more.then(|| entries.last()).flatten().map(|e| {
        Cursor(Recency {
            ts: e.head.ts,
            conversation: e.name.clone(),
        })
        .encode()
    });
    let groups: Vec<GroupId> = entries
        .iter()
        .filter_map(|e| e.conversation.group_id().cloned())
        .collect();
    let keys: Vec<(UserId, ConversationId)> = entries
        .iter()
        .map(|e| (caller.clone(), e.conversation.clone()))
        .collect();
    // A place in the recency index may lag its conversation's head: the page's direct heads are
    // read consistently beside the last messages, a head that moved has its last message read
    // again, and the page is shown in the order of its heads.
    let direct: Vec<ConversationId> = entries
        .iter()
        .filter(|e| e.conversation.group_id().is_none())
        .map(|e| e.conversation.clone())
        .collect();
    let (lasts, summaries, markers, fresh) = tokio::join!(
        last_messages(ports, &entries),
        ports.groups.summaries(&groups),
        ports.markers.get(&keys),
        ports.index.heads(&direct)
    );
    let (mut lasts, summaries, markers) = (lasts?, summaries?, markers?);
    let fresh: HashMap<ConversationId, Head> = direct
        .into_iter()
        .zip(fresh?)
        .filter_map(|(c, h)| Some((c, h?)))
        .collect();
    let mut moved = Vec::new();
    for (e, last) in entries.iter_mut().zip(lasts.iter_mut()) {
        if let Some(head) = fresh.get(&e.conversation).filter(|h| h.seq > e.head.seq) {
            e.head = *head;
            moved.push((e, last));
        }
    }
    if !moved.is_empty() {
        let keys: Vec<(ConversationId, u64)> = moved
            .iter()
            .map(|(e, _)| (e.conversation.clone(), e.head.seq))
            .collect();
        let found = ports.chat.get_many(&keys).await?;
        for ((_, last), m) in moved.into_iter().zip(found) {
            if m.is_some() {
                *last = m;
            }
        }
    }
    let names: HashMap<GroupId, String> =
        summaries.into_iter().map(|g| (g.group, g.name)).collect();
    let mut conversations: Vec<(u64, Item)> = entries
        .into_iter()
        .zip(lasts)
        .zip(markers)
        .map(|((e, last), m)| {
            let seq = last.as_ref().map_or(0, |m| m.seq);
            let item = Item {
                with: match &e.conversation {
                    ConversationId::Direct { low, high } => {
                        Some(if low == caller { high } else { low }.to_string())
                    }
                    ConversationId::Group(_) => None,
                },
                group: e.conversation.group_id().map(ToString::to_string),
                name: e
                    .conversation
                    .group_id()
                    .and_then(|g| names.get(g).cloned()),
                conversation: e.name,
                last: last.as_ref().map(StoredMessage::to_frame),
                read: m.read,
                unread: seq.saturating_sub(m.read),
            };
            (e.head.ts, item)
        })
        .collect();
    conversations
        .sort_by(|(a, x), (b, y)| b.cmp(a).then_with(|| x.conversation.cmp(&y.conversation)));
    Ok(Page {
        conversations: conversations.into_iter().map(|(_, item)| item).collect(),
        next,
    })
}

/// Every group of `caller`'s with its head (batched); a group without one is listed too, its
/// last message read from history.
async fn group_entries(ports: &InboxPorts<'_>, caller: &UserId) -> Result<Vec<Entry>, ApiError> {
    let groups: Vec<ConversationId> = ports
        .groups
        .memberships_of(caller)
        .await?
        .into_iter()
        .map(|m| ConversationId::group(m.group))
        .collect();
    let heads = ports.index.heads(&groups).await?;
    Ok(groups
        .into_iter()
        .zip(heads)
        .map(|(conversation, head)| match head {
            Some(head) => Entry::new(conversation, head, false),
            None => Entry::new(conversation, Head::default(), true),
        })
        .collect())
}

/// The last message of each entry (same order): the indexed heads in one batched read; a
/// head not (yet) stored, or none indexed, from the conversation's history.
async fn last_messages(
    ports: &InboxPorts<'_>,
    entries: &[Entry],
) -> Result<Vec<Option<StoredMessage>>, ApiError> {
    let keys: Vec<(ConversationId, u64)> = entries
        .iter()
        .filter(|e| !e.unindexed)
        .map(|e| (e.conversation.clone(), e.head.seq))
        .collect();
    let mut found = ports.chat.get_many(&keys).await?.into_iter();
    let mut lasts = Vec::with_capacity(entries.len());
    for e in entries {
        let indexed = if e.unindexed {
            None
        } else {
            found.next().flatten()
        };
        let last = match indexed {
            Some(m) => Some(m),
            None => ports
                .history
                .page(&e.conversation, Range::Before { before: None }, 1)
                .await?
                .messages
                .pop(),
        };
        lasts.push(last);
    }
    Ok(lasts)
}

/// One member's markers, as the contract shows them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Receipt {
    pub user: String,
    pub read: u64,
    pub delivered: u64,
    pub ts: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Receipts {
    pub receipts: Vec<Receipt>,
    pub next: Option<String>,
}

/// A parsed receipts request: after the user id `cursor`, up to `limit` members with markers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceiptsQuery {
    pub conversation: ConversationId,
    pub limit: usize,
    pub cursor: Option<UserId>,
}

impl ReceiptsQuery {
    pub fn parse<'a>(
        conversation: &str,
        param: impl Fn(&str) -> Option<&'a str>,
    ) -> Result<Self, ApiError> {
        let conversation = ConversationId::parse(conversation)
            .map_err(|e| bad(format!("bad conversation id: {e}")))?;
        let cursor = param("cursor")
            .map(|c| UserId::parse(c).map_err(|_| bad("`cursor` is not one this server gave")))
            .transpose()?;
        Ok(Self {
            conversation,
            limit: limit(param("limit"), RECEIPTS_DEFAULT_LIMIT, RECEIPTS_MAX_LIMIT)?,
            cursor,
        })
    }
}

/// Every member's markers (members with neither left out), by user id; members only.
pub async fn receipts(
    markers: &dyn ReadMarkers,
    groups: &dyn GroupStore,
    caller: &UserId,
    query: &ReceiptsQuery,
) -> Result<Receipts, ApiError> {
    crate::history::authorize(groups, caller, &query.conversation).await?;
    let mut members = match &query.conversation {
        ConversationId::Direct { low, high } => vec![low.clone(), high.clone()],
        ConversationId::Group(g) => groups.members(g).await?,
    };
    members.sort();
    if let Some(after) = &query.cursor {
        members.retain(|m| m > after);
    }
    let mut receipts = Vec::new();
    let mut scanned = 0;
    // Members are read a chunk at a time until the page is full: a large group whose members
    // mostly have no markers costs more reads, never a longer answer.
    for chunk in members.chunks(RECEIPTS_MAX_LIMIT) {
        let found = markers.of_members(&query.conversation, chunk).await?;
        for (user, m) in chunk.iter().zip(found) {
            if receipts.len() == query.limit {
                break;
            }
            scanned += 1;
            if m.read > 0 || m.delivered > 0 {
                receipts.push(Receipt {
                    user: user.to_string(),
                    read: m.read,
                    delivered: m.delivered,
                    ts: m.ts,
                });
            }
        }
        if receipts.len() == query.limit {
            break;
        }
    }
    let next = (scanned < members.len())
        .then(|| members.get(scanned.wrapping_sub(1)))
        .flatten()
        .map(ToString::to_string);
    Ok(Receipts { receipts, next })
}

#[cfg(test)]
mod tests;
