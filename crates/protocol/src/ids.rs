//! Identifiers of the contract, each parsed once at the edge and trusted afterwards.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Why a string is not a valid identifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("{what} must be 1-{max} characters")]
    Length { what: &'static str, max: usize },
    #[error("{what} may only contain A-Z a-z 0-9 _ . -")]
    Charset { what: &'static str },
    #[error("conversation must be dm:<a>:<b> with a < b, or group:<id>")]
    Conversation,
}

const MAX_ID: usize = 64;

fn check_name(s: &str, what: &'static str) -> Result<(), IdError> {
    if s.is_empty() || s.len() > MAX_ID {
        return Err(IdError::Length { what, max: MAX_ID });
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
    {
        return Err(IdError::Charset { what });
    }
    Ok(())
}

macro_rules! name_id {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Parses and validates.
            pub fn parse(s: impl Into<String>) -> Result<Self, IdError> {
                let s = s.into();
                check_name(&s, $what)?;
                Ok(Self(s))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(s: String) -> Result<Self, IdError> {
                Self::parse(s)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

name_id!(
    /// A user id: 1–64 characters from `[A-Za-z0-9_.-]`.
    UserId,
    "user id"
);
name_id!(
    /// A group id: 1–64 characters from `[A-Za-z0-9_.-]` (the server mints `g_<hex>`).
    GroupId,
    "group id"
);

/// A client's message id: 1–64 characters, unique per sender.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ClientMsgId(String);

impl ClientMsgId {
    pub fn parse(s: impl Into<String>) -> Result<Self, IdError> {
        let s = s.into();
        let n = s.chars().count();
        if n == 0 || n > MAX_ID {
            return Err(IdError::Length {
                what: "id",
                max: MAX_ID,
            });
        }
        Ok(Self(s))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for ClientMsgId {
    type Error = IdError;
    fn try_from(s: String) -> Result<Self, IdError> {
        Self::parse(s)
    }
}

impl From<ClientMsgId> for String {
    fn from(id: ClientMsgId) -> String {
        id.0
    }
}

impl fmt::Display for ClientMsgId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A conversation: `dm:<a>:<b>` (a < b in byte order) or `group:<group id>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum ConversationId {
    Direct { low: UserId, high: UserId },
    Group(GroupId),
}

impl ConversationId {
    /// The direct conversation of two different users (in either order).
    pub fn direct(a: &UserId, b: &UserId) -> Result<Self, IdError> {
        match a.as_str().cmp(b.as_str()) {
            std::cmp::Ordering::Less => Ok(Self::Direct {
                low: a.clone(),
                high: b.clone(),
            }),
            std::cmp::Ordering::Greater => Ok(Self::Direct {
                low: b.clone(),
                high: a.clone(),
            }),
            std::cmp::Ordering::Equal => Err(IdError::Conversation),
        }
    }

    pub fn group(id: GroupId) -> Self {
        Self::Group(id)
    }

    pub fn parse(s: &str) -> Result<Self, IdError> {
        if let Some(rest) = s.strip_prefix("dm:") {
            let (a, b) = rest.split_once(':').ok_or(IdError::Conversation)?;
            let (a, b) = (UserId::parse(a)?, UserId::parse(b)?);
            if a.as_str() >= b.as_str() {
                return Err(IdError::Conversation);
            }
            return Ok(Self::Direct { low: a, high: b });
        }
        if let Some(g) = s.strip_prefix("group:") {
            return Ok(Self::Group(GroupId::parse(g)?));
        }
        Err(IdError::Conversation)
    }

    /// Whether `user` is one of the two people of a direct conversation (always false for groups,
    /// whose membership lives in the group table).
    pub fn is_direct_member(&self, user: &UserId) -> bool {
        matches!(self, Self::Direct { low, high } if low == user || high == user)
    }

    pub fn group_id(&self) -> Option<&GroupId> {
        match self {
            Self::Group(g) => Some(g),
            Self::Direct { .. } => None,
        }
    }
}

impl fmt::Display for ConversationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Direct { low, high } => write!(f, "dm:{low}:{high}"),
            Self::Group(g) => write!(f, "group:{g}"),
        }
    }
}

impl TryFrom<String> for ConversationId {
    type Error = IdError;
    fn try_from(s: String) -> Result<Self, IdError> {
        Self::parse(&s)
    }
}

impl From<ConversationId> for String {
    fn from(c: ConversationId) -> String {
        c.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_ids_follow_the_contract() {
        assert!(UserId::parse("alice_1.x-Y").is_ok());
        assert!(UserId::parse("").is_err());
        assert!(UserId::parse("a".repeat(64)).is_ok());
        assert!(UserId::parse("a".repeat(65)).is_err());
        assert!(UserId::parse("al ice").is_err());
        assert!(UserId::parse("alice:bob").is_err());
        assert!(UserId::parse("é").is_err());
    }

    #[test]
    fn direct_conversations_order_their_members() {
        let (a, b) = (
            UserId::parse("bob").unwrap(),
            UserId::parse("alice").unwrap(),
        );
        let c = ConversationId::direct(&a, &b).unwrap();
        assert_eq!(c.to_string(), "dm:alice:bob");
        assert_eq!(ConversationId::parse("dm:alice:bob").unwrap(), c);
        assert!(ConversationId::parse("dm:bob:alice").is_err());
        assert!(ConversationId::parse("dm:alice:alice").is_err());
        assert!(ConversationId::direct(&a, &a).is_err());
        assert!(c.is_direct_member(&a) && c.is_direct_member(&b));
        assert!(!c.is_direct_member(&UserId::parse("carol").unwrap()));
    }

    #[test]
    fn group_conversations_parse() {
        let c = ConversationId::parse("group:g_7f3a").unwrap();
        assert_eq!(c.group_id().unwrap().as_str(), "g_7f3a");
        assert_eq!(c.to_string(), "group:g_7f3a");
        assert!(ConversationId::parse("group:").is_err());
        assert!(ConversationId::parse("chan:x").is_err());
    }

    #[test]
    fn client_ids_count_characters() {
        assert!(ClientMsgId::parse("é".repeat(64)).is_ok());
        assert!(ClientMsgId::parse("x".repeat(65)).is_err());
        assert!(ClientMsgId::parse("").is_err());
    }
}
