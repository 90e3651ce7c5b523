//! Who receives a submission, and whether its sender may send it.

use foldhash::HashMap;
use std::sync::Arc;

use tracing::warn;

use connect_protocol::{ConversationId, ErrorCode, GroupId, UserId};

use super::{Failure, MessagingStep};
use crate::model::Submission;

/// Who receives a message, and the membership version it is sequenced under (groups only).
#[derive(Debug, Clone)]
pub(super) struct Audience {
    pub users: Arc<[UserId]>,
    pub mv: Option<u64>,
}

impl MessagingStep {
    /// Who receives a submission, checking that its sender may send it. A group's system message
    /// (from the group-events function) first drops the group from the membership cache, so the
    /// change holds from this event on; a removed member also receives their removal. `view`
    /// holds the memberships read for this batch. `at`: the membership version a message was
    /// sequenced under (a repeat of a stored one): only the members who had joined by then.
    pub(super) async fn audience(
        &self,
        sub: &Submission,
        view: &mut HashMap<GroupId, crate::groups::Members>,
        at: Option<u64>,
    ) -> Result<Audience, Failure> {
        match &sub.conversation {
            ConversationId::Direct { low, high }
                if sub.conversation.is_direct_member(&sub.sender) =>
            {
                Ok(Audience {
                    users: Arc::from([low.clone(), high.clone()]),
                    mv: None,
                })
            }
            ConversationId::Direct { .. } => Err(Failure::Refused(
                ErrorCode::Forbidden,
                "not a member of this conversation",
            )),
            ConversationId::Group(group) => {
                if sub.event.is_some() {
                    self.ports.groups.invalidate(group);
                    view.remove(group);
                }
                // Members older than the version asked for (a message another region sequenced
                // after a change this region's cache has not seen): read them again.
                let older = |m: &crate::groups::Members| {
                    at.is_some_and(|v| m.as_ref().is_none_or(|r| r.version < v))
                };
                if view.get(group).is_some_and(older) {
                    view.remove(group);
                }
                let members = match view.get(group) {
                    Some(m) => m.clone(),
                    None => {
                        let read = || async {
                            self.ports.groups.members(group).await.map_err(|e| {
                                warn!(cause = %e, %group, "membership lookup failed");
                                Failure::Backend(
                                    e,
                                    "group directory unavailable; retry with the same id",
                                )
                            })
                        };
                        let mut m = read().await?;
                        if older(&m) {
                            self.ports.groups.invalidate(group);
                            m = read().await?;
                        }
                        view.insert(group.clone(), m.clone());
                        m
                    }
                };
                let mv = members.as_ref().map(|r| at.unwrap_or(r.version));
                let users = |r: &crate::groups::Roster| match at {
                    Some(v) => r.at(v),
                    None => r.users(),
                };
                match (&sub.event, members) {
                    (Some(event), members) => {
                        let mut all: Vec<UserId> =
                            members.map(|r| users(&r).to_vec()).unwrap_or_default();
                        if let Some(user) =
                            event.user.as_deref().and_then(|u| UserId::parse(u).ok())
                        {
                            if !all.contains(&user) {
                                all.push(user);
                            }
                        }
                        Ok(Audience {
                            users: all.into(),
                            mv,
                        })
                    }
                    (None, None) => Err(Failure::Refused(ErrorCode::NotFound, "no such group")),
                    (None, Some(r)) if r.contains(&sub.sender) => Ok(Audience {
                        users: users(&r),
                        mv,
                    }),
                    (None, Some(_)) => Err(Failure::Refused(
                        ErrorCode::Forbidden,
                        "not a member of this group",
                    )),
                }
            }
        }
    }
}
