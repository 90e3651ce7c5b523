//! The Sequence Generator's batched allocation (`functions/sequencer`): `[{conversation, count}]`
//! → ranges, over the same [`SequenceAllocator`] messaging links in (one atomic add per
//! conversation).

use serde::{Deserialize, Serialize};

use connect_protocol::ConversationId;

use crate::ports::{Reserved, SequenceAllocator};
use crate::PortError;

/// Requests per call at most.
pub const MAX_REQUESTS: usize = 100;
/// Seqs per request at most.
pub const MAX_COUNT: u64 = 10_000;

#[derive(Debug, Clone, Deserialize)]
pub struct Request {
    pub conversation: String,
    pub count: u64,
}

/// The function's input: `{"requests":[…]}`.
#[derive(Debug, Clone, Deserialize)]
pub struct Allocate {
    pub requests: Vec<Request>,
}

/// One answer, in request order: a range, or why not.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Range {
    pub conversation: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Allocated {
    pub ranges: Vec<Range>,
}

/// Why a whole call is refused.
#[derive(Debug, thiserror::Error)]
pub enum AllocateError {
    #[error("at most {MAX_REQUESTS} requests per call")]
    TooMany,
}

fn refused(conversation: &str, error: impl Into<String>) -> Range {
    Range {
        conversation: conversation.to_owned(),
        first: None,
        last: None,
        error: Some(error.into()),
    }
}

/// Validates and allocates; bad requests are answered one by one, the others allocated
/// together (the same conversation twice gets two consecutive ranges).
pub async fn allocate(
    allocator: &dyn SequenceAllocator,
    input: Allocate,
) -> Result<Allocated, AllocateError> {
    if input.requests.len() > MAX_REQUESTS {
        return Err(AllocateError::TooMany);
    }
    let mut ranges: Vec<Option<Range>> = vec![None; input.requests.len()];
    let mut valid: Vec<(usize, ConversationId, u64)> = Vec::new();
    for (i, r) in input.requests.iter().enumerate() {
        match ConversationId::parse(&r.conversation) {
            Err(e) => ranges[i] = Some(refused(&r.conversation, format!("bad conversation: {e}"))),
            Ok(_) if !(1..=MAX_COUNT).contains(&r.count) => {
                ranges[i] = Some(refused(
                    &r.conversation,
                    format!("count must be 1 to {MAX_COUNT}"),
                ))
            }
            Ok(c) => valid.push((i, c, r.count)),
        }
    }
    // One add per conversation: merge repeats, then split the range in request order.
    let mut merged: Vec<(ConversationId, u64)> = Vec::new();
    for (_, c, n) in &valid {
        match merged.iter_mut().find(|(m, _)| m == c) {
            Some((_, total)) => *total += n,
            None => merged.push((c.clone(), *n)),
        }
    }
    let reserved: Vec<Result<Reserved, PortError>> = allocator.allocate(&merged).await;
    let mut next: Vec<Result<u64, PortError>> =
        reserved.into_iter().map(|r| r.map(|r| r.first)).collect();
    for (i, c, n) in valid {
        let at = merged.iter().position(|(m, _)| *m == c).unwrap_or(0);
        ranges[i] = Some(match &mut next[at] {
            Ok(first) => {
                let range = Range {
                    conversation: c.to_string(),
                    first: Some(*first),
                    last: Some(*first + n - 1),
                    error: None,
                };
                *first += n;
                range
            }
            Err(e) => refused(&c.to_string(), e.to_string()),
        });
    }
    Ok(Allocated {
        ranges: ranges.into_iter().flatten().collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::Memory;

    fn req(c: &str, n: u64) -> Request {
        Request {
            conversation: c.into(),
            count: n,
        }
    }

    #[tokio::test]
    async fn ranges_follow_request_order_with_one_add_per_conversation() {
        let mem = Memory::default();
        let out = allocate(
            &mem,
            Allocate {
                requests: vec![
                    req("dm:a:b", 3),
                    req("group:g1", 1),
                    req("dm:a:b", 2),
                    req("nope", 1),
                    req("dm:a:b", 0),
                ],
            },
        )
        .await
        .unwrap();
        let r = |i: usize| (out.ranges[i].first, out.ranges[i].last);
        assert_eq!(r(0), (Some(1), Some(3)));
        assert_eq!(r(1), (Some(1), Some(1)));
        assert_eq!(r(2), (Some(4), Some(5)));
        assert!(out.ranges[3].error.is_some() && out.ranges[4].error.is_some());
        let again = allocate(
            &mem,
            Allocate {
                requests: vec![req("dm:a:b", 1)],
            },
        )
        .await
        .unwrap();
        assert_eq!(again.ranges[0].first, Some(6));
        let many = Allocate {
            requests: (0..=MAX_REQUESTS).map(|_| req("dm:a:b", 1)).collect(),
        };
        assert!(allocate(&mem, many).await.is_err());
    }
}
