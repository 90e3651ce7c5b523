//! The history use-case: `GET /v1/conversations/{conversation}/messages` (PROTOCOL.md, History).
//! Parsing and authorization are here; the HTTP and Lambda adapters only move bytes.

use connect_protocol::{ConversationId, ErrorCode, MessageFrame, UserId};
use serde::Serialize;

use crate::groups::GroupStore;
use crate::model::StoredMessage;
use crate::ports::HistoryStore;
pub use crate::ApiError;

/// `limit` when the request has none.
pub const DEFAULT_LIMIT: u32 = 50;
/// The largest `limit` a request may ask for.
pub const MAX_LIMIT: u32 = 100;

/// Which messages a page covers (bounds are exclusive).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Range {
    /// The first messages above `after` (and below `before`, when given): ascending paging.
    After { after: u64, before: Option<u64> },
    /// The last messages below `before` (or below the end): descending paging.
    Before { before: Option<u64> },
}

/// One page, ascending by seq.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Page {
    pub messages: Vec<StoredMessage>,
    /// Whether more messages lie beyond the page in the direction of paging.
    pub has_more: bool,
}

/// The response body.
#[derive(Debug, Serialize)]
pub struct PageBody {
    pub messages: Vec<MessageFrame>,
    pub has_more: bool,
}

impl From<Page> for PageBody {
    fn from(p: Page) -> Self {
        Self {
            messages: p.messages.iter().map(StoredMessage::to_frame).collect(),
            has_more: p.has_more,
        }
    }
}

/// A parsed history request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    pub conversation: ConversationId,
    pub range: Range,
    pub limit: u32,
}

pub(crate) fn whole_number(name: &str, value: Option<&str>) -> Result<Option<u64>, ApiError> {
    value
        .map(|v| {
            v.parse::<u64>().map_err(|_| {
                ApiError::new(
                    ErrorCode::BadRequest,
                    format!("`{name}` must be a whole number"),
                )
            })
        })
        .transpose()
}

impl Query {
    /// Parses the path's conversation and the query parameters (`param(name)`).
    pub fn parse<'a>(
        conversation: &str,
        param: impl Fn(&str) -> Option<&'a str>,
    ) -> Result<Self, ApiError> {
        let conversation = ConversationId::parse(conversation).map_err(|e| {
            ApiError::new(ErrorCode::BadRequest, format!("bad conversation id: {e}"))
        })?;
        let after = whole_number("after", param("after"))?;
        let before = whole_number("before", param("before"))?;
        let limit = match whole_number("limit", param("limit"))? {
            None => DEFAULT_LIMIT,
            Some(l) if (1..=u64::from(MAX_LIMIT)).contains(&l) => l as u32,
            Some(_) => {
                return Err(ApiError::new(
                    ErrorCode::BadRequest,
                    format!("`limit` must be between 1 and {MAX_LIMIT}"),
                ))
            }
        };
        let range = match after {
            Some(after) => Range::After { after, before },
            None => Range::Before { before },
        };
        Ok(Self {
            conversation,
            range,
            limit,
        })
    }
}

/// Who may read a conversation: the two of a direct one; the current members of a group.
pub async fn authorize(
    groups: &dyn GroupStore,
    caller: &UserId,
    conversation: &ConversationId,
) -> Result<(), ApiError> {
    match conversation {
        ConversationId::Direct { .. } if conversation.is_direct_member(caller) => Ok(()),
        ConversationId::Direct { .. } => Err(ApiError::new(
            ErrorCode::Forbidden,
            "not a member of this conversation",
        )),
        ConversationId::Group(g) => {
            if groups.is_member(g, caller).await? {
                Ok(())
            } else if groups.meta(g).await?.is_none() {
                Err(ApiError::new(ErrorCode::NotFound, "no such group"))
            } else {
                Err(ApiError::new(
                    ErrorCode::Forbidden,
                    "not a member of this group",
                ))
            }
        }
    }
}

/// Reads one page for `caller`.
pub async fn read(
    store: &dyn HistoryStore,
    groups: &dyn GroupStore,
    caller: &UserId,
    query: &Query,
) -> Result<Page, ApiError> {
    authorize(groups, caller, &query.conversation).await?;
    if let Range::After {
        after,
        before: Some(before),
    } = query.range
    {
        if before <= after.saturating_add(1) {
            return Ok(Page::default());
        }
    }
    if let Range::Before {
        before: Some(0 | 1),
    } = query.range
    {
        return Ok(Page::default());
    }
    Ok(store
        .page(&query.conversation, query.range, query.limit)
        .await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(params: &[(&str, &str)]) -> Result<Query, ApiError> {
        Query::parse("dm:alice:bob", |name| {
            params.iter().find(|(k, _)| *k == name).map(|(_, v)| *v)
        })
    }

    #[test]
    fn parameters_parse_as_the_contract_says() {
        let d = q(&[]).unwrap();
        assert_eq!(d.limit, 50);
        assert_eq!(d.range, Range::Before { before: None });
        let a = q(&[("after", "100"), ("limit", "100")]).unwrap();
        assert_eq!(
            a.range,
            Range::After {
                after: 100,
                before: None
            }
        );
        assert_eq!(a.limit, 100);
        let b = q(&[("before", "51"), ("limit", "1")]).unwrap();
        assert_eq!(b.range, Range::Before { before: Some(51) });
        for bad in [
            [("limit", "0")],
            [("limit", "101")],
            [("limit", "5000")],
            [("after", "-1")],
            [("before", "1.5")],
            [("after", "x")],
        ] {
            let e = q(&bad).unwrap_err();
            assert_eq!(e.code, ErrorCode::BadRequest, "{bad:?}");
            assert_eq!(e.status(), 400);
        }
        assert_eq!(
            Query::parse("nope", |_| None).unwrap_err().code,
            ErrorCode::BadRequest
        );
    }

    #[tokio::test]
    async fn only_members_read_a_conversation() {
        let groups = crate::memory::Memory::default();
        let c = ConversationId::parse("dm:alice:bob").unwrap();
        assert!(authorize(&groups, &UserId::parse("alice").unwrap(), &c)
            .await
            .is_ok());
        let g = ConversationId::parse("group:g_x").unwrap();
        let e = authorize(&groups, &UserId::parse("alice").unwrap(), &g)
            .await
            .unwrap_err();
        assert_eq!(e.status(), 404);
        let e = authorize(&groups, &UserId::parse("carol").unwrap(), &c)
            .await
            .unwrap_err();
        assert_eq!(e.status(), 403);
        assert_eq!(
            e.body(),
            r#"{"error":{"code":"forbidden","message":"not a member of this conversation"}}"#
        );
    }
}
