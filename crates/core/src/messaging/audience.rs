//! Who receives a submission, and whether its sender may send it.

use std::collections::HashMap;
use std::sync::Arc;

use tracing::warn;

use connect_protocol::{ConversationId, ErrorCode, GroupId, UserId};

use super::{Failure, MessagingStep};
use crate::model::Submission;

impl MessagingStep {
    /// Who receives a submission, checking that its sender may send it. A group's system message
    /// (from the group-events function) first drops the group from the membership cache, so the
    /// change holds from this event on; a removed member also receives their removal. `view`
    /// holds the memberships read for this batch.
    pub(super) async fn audience(
        &self,
        sub: &Submission,
        view: &mut HashMap<GroupId, crate::groups::Members>,
    ) -> Result<Arc<[UserId]>, Failure> {
        match &sub.conversation {
            ConversationId::Direct { low, high }
                if sub.conversation.is_direct_member(&sub.sender) =>
            {
                Ok(Arc::from([low.clone(), high.clone()]))
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
                let members = match view.get(group) {
                    Some(m) => m.clone(),
                    None => {
                        let m = self.ports.groups.members(group).await.map_err(|e| {
                            warn!(cause = %e, %group, "membership lookup failed");
                            Failure::Backend(
                                e,
                                "group directory unavailable; retry with the same id",
                            )
                        })?;
                        view.insert(group.clone(), m.clone());
                        m
                    }
                };
                match (&sub.event, members) {
                    (Some(event), members) => {
                        let mut all: Vec<UserId> = members.map(|m| m.to_vec()).unwrap_or_default();
                        if let Some(user) =
                            event.user.as_deref().and_then(|u| UserId::parse(u).ok())
                        {
                            if !all.contains(&user) {
                                all.push(user);
                            }
                        }
                        Ok(all.into())
                    }
                    (None, None) => Err(Failure::Refused(ErrorCode::NotFound, "no such group")),
                    (None, Some(m)) if m.binary_search(&sub.sender).is_ok() => Ok(m),
                    (None, Some(_)) => Err(Failure::Refused(
                        ErrorCode::Forbidden,
                        "not a member of this group",
                    )),
                }
            }
        }
    }
}
