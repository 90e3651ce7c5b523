//! What a chat in a terminal reads and prints, without I/O: typed lines become [`Input`]s, and
//! frames and history items become lines like `[12:03] alice → bob: hi`.

use std::collections::HashMap;

use serde_json::Value;

use connect_protocol::{ConversationId, GroupId, IdError, UserId};

/// Where a line goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    User(String),
    /// A group id, or a name to look up among the user's groups.
    Group(String),
}

impl Target {
    /// `@bob` / `bob` → a user, `#g_7f3a` / `#Trip` → a group; `dm:…` and `group:…` as well.
    pub fn parse(text: &str, me: &str) -> Option<Self> {
        let text = text.trim();
        if let Some(g) = text
            .strip_prefix('#')
            .or_else(|| text.strip_prefix("group:"))
        {
            return (!g.is_empty()).then(|| Target::Group(g.to_owned()));
        }
        if let Some(rest) = text.strip_prefix("dm:") {
            let (a, b) = rest.split_once(':')?;
            return Some(Target::User(if a == me { b } else { a }.to_owned()));
        }
        let user = text.strip_prefix('@').unwrap_or(text);
        (!user.is_empty() && !user.contains(char::is_whitespace))
            .then(|| Target::User(user.to_owned()))
    }

    /// The conversation `me` has with this target (the ids checked as the contract says).
    pub fn conversation(&self, me: &str) -> Result<ConversationId, IdError> {
        match self {
            Target::User(u) => {
                ConversationId::direct(&UserId::parse(me)?, &UserId::parse(u.as_str())?)
            }
            Target::Group(g) => Ok(ConversationId::group(GroupId::parse(g.as_str())?)),
        }
    }
}

/// A typed line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// Text for the current target.
    Say(String),
    /// `@bob text`, `#g_7f3a text`: one line to another target (the current one stays).
    SayTo(Target, String),
    /// `/to bob`, `/group Trip`: the target of the lines that follow.
    Switch(Target),
    /// `/history [n]`: the last n messages (20) of the current conversation.
    History(u32),
    /// `/groups`: the user's groups.
    Groups,
    /// The presence of the current conversation's members.
    Who,
    /// A line starting with `{`: sent as it is (a raw frame).
    Raw(String),
    Help,
    Quit,
    Empty,
    /// Not understood; the text says why.
    Invalid(String),
}

pub const HELP: &str = "\
  text               send to the current conversation
  /to <user>         talk to a user
  /group <id|name>   talk in a group (its id, or its name)
  @user text         one line to a user;  #group text: one line to a group
  /history [n]       the last n messages here (20)
  /groups            your groups
  /who               who of this conversation is online (and, from then on, their changes)
  {…}                a raw JSON frame
  /help, /quit       (Ctrl-D quits too)";

impl Input {
    pub fn parse(line: &str, me: &str) -> Self {
        let line = line.trim();
        if line.is_empty() {
            return Input::Empty;
        }
        if line.starts_with('{') {
            return Input::Raw(line.to_owned());
        }
        if let Some(rest) = line.strip_prefix('@').or_else(|| line.strip_prefix('#')) {
            let prefix = &line[..1];
            let (to, body) = rest.split_once(' ').unwrap_or((rest, ""));
            return match Target::parse(&format!("{prefix}{to}"), me) {
                Some(t) if !body.trim().is_empty() => Input::SayTo(t, body.trim().to_owned()),
                Some(t) => Input::Switch(t),
                None => Input::Invalid(format!("`{prefix}` needs a name")),
            };
        }
        let Some(command) = line.strip_prefix('/') else {
            return Input::Say(line.to_owned());
        };
        let (name, arg) = command.split_once(' ').unwrap_or((command, ""));
        let arg = arg.trim();
        match name {
            "to" | "dm" => match Target::parse(arg, me) {
                Some(t @ Target::User(_)) => Input::Switch(t),
                _ => Input::Invalid("/to <user>".into()),
            },
            "group" | "g" if !arg.is_empty() => Input::Switch(Target::Group(
                arg.trim_start_matches('#')
                    .trim_start_matches("group:")
                    .into(),
            )),
            "group" | "g" => Input::Invalid("/group <group id or name>".into()),
            "history" | "h" if arg.is_empty() => Input::History(20),
            "history" | "h" => match arg.parse::<u32>() {
                Ok(n) if (1..=100).contains(&n) => Input::History(n),
                _ => Input::Invalid("/history [1..100]".into()),
            },
            "groups" => Input::Groups,
            "who" | "w" => Input::Who,
            "help" | "?" => Input::Help,
            "quit" | "exit" | "q" => Input::Quit,
            other => Input::Invalid(format!("no command /{other} (/help lists them)")),
        }
    }
}

/// A `presence` frame as a line: `* bob: online`, `* bob: last seen 12:03`, `* bob: offline`
/// (never seen), `* x: hidden` (not one you may watch).
pub fn presence_line(f: &Value) -> String {
    let who = f["user"].as_str().unwrap_or("?");
    let state = if f["hidden"] == true {
        "hidden".to_owned()
    } else if f["online"] == true {
        "online".to_owned()
    } else {
        match f["last_seen"].as_u64() {
            Some(ts) => format!("last seen {}", clock(ts)),
            None => "offline".to_owned(),
        }
    };
    format!("* {who}: {state}")
}

/// `HH:MM` (UTC) of a timestamp in milliseconds.
pub fn clock(ts_ms: u64) -> String {
    let secs = ts_ms / 1000 % 86_400;
    format!("{:02}:{:02}", secs / 3600, secs / 60 % 60)
}

/// The other party of a direct conversation, seen from `from`.
fn peer(conversation: &str, from: &str) -> String {
    match ConversationId::parse(conversation) {
        Ok(ConversationId::Direct { low, high }) if low.as_str() == from => high.to_string(),
        Ok(ConversationId::Direct { low, .. }) => low.to_string(),
        _ => String::new(),
    }
}

/// A stored message (a `message` frame or a history item) as a line. `names` maps group ids to
/// their names.
pub fn line(m: &Value, names: &HashMap<String, String>) -> String {
    let s = |k: &str| m.get(k).and_then(Value::as_str).unwrap_or("");
    let (from, conversation) = (s("from"), s("conversation"));
    let ts = m.get("ts").and_then(Value::as_u64).unwrap_or(0);
    let place = match m
        .get("group")
        .and_then(Value::as_str)
        .or_else(|| conversation.strip_prefix("group:"))
    {
        Some(g) => format!("#{}", names.get(g).map_or(g, String::as_str)),
        None => peer(conversation, from),
    };
    if let Some(event) = m.get("event") {
        let kind = event.get("kind").and_then(Value::as_str).unwrap_or("");
        let user = event.get("user").and_then(Value::as_str).unwrap_or("");
        let what = match kind {
            "group_created" => format!("{from} created {place}"),
            "member_added" => format!("{from} added {user} to {place}"),
            "member_removed" if user == from => format!("{from} left {place}"),
            "member_removed" => format!("{from} removed {user} from {place}"),
            other => format!("{from}: {other} in {place}"),
        };
        return format!("[{}] * {what}", clock(ts));
    }
    format!("[{}] {from} → {place}: {}", clock(ts), s("body"))
}

/// One conversation of the inbox as a line: unread count (blank when none), who or which group,
/// then its last message as [`line`] prints it.
pub fn inbox_line(item: &Value) -> String {
    let unread = item["unread"].as_u64().unwrap_or(0);
    let unread = if unread > 0 {
        format!("{unread:>4}")
    } else {
        "    ".to_owned()
    };
    let who = match (item["with"].as_str(), item["group"].as_str()) {
        (Some(user), _) => format!("@{user}"),
        (None, Some(group)) => format!("#{}", item["name"].as_str().unwrap_or(group)),
        _ => item["conversation"].as_str().unwrap_or("").to_owned(),
    };
    let mut names = HashMap::new();
    if let (Some(g), Some(n)) = (item["group"].as_str(), item["name"].as_str()) {
        names.insert(g.to_owned(), n.to_owned());
    }
    let last = match item.get("last").filter(|l| !l.is_null()) {
        Some(last) => line(last, &names),
        None => String::new(),
    };
    format!("{unread}  {who:<20} {last}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_inbox_line_shows_unread_who_and_the_last_message() {
        let item = json!({"conversation":"dm:alice:bob","with":"bob","read":1,"unread":2,
            "last":{"conversation":"dm:alice:bob","seq":3,"from":"bob","id":"x","body":"hi","ts":0}});
        assert_eq!(
            inbox_line(&item),
            "   2  @bob                 [00:00] bob → alice: hi"
        );
        let item = json!({"conversation":"group:g_1","group":"g_1","name":"Trip","read":5,"unread":0,
            "last":{"conversation":"group:g_1","group":"g_1","seq":5,"from":"bob","id":"x","body":"yo","ts":0}});
        assert_eq!(
            inbox_line(&item),
            "      #Trip                [00:00] bob → #Trip: yo"
        );
    }
    use serde_json::json;

    #[test]
    fn presence_reads_as_a_line() {
        use serde_json::json;
        assert_eq!(
            presence_line(&json!({"type":"presence","user":"bob","online":true})),
            "* bob: online"
        );
        assert_eq!(
            presence_line(
                &json!({"type":"presence","user":"bob","online":false,"last_seen":1_763_800_000_123_u64})
            ),
            format!("* bob: last seen {}", clock(1_763_800_000_123))
        );
        assert_eq!(
            presence_line(&json!({"type":"presence","user":"bob","online":false})),
            "* bob: offline"
        );
        assert_eq!(
            presence_line(&json!({"type":"presence","user":"x","hidden":true})),
            "* x: hidden"
        );
    }

    #[test]
    fn typed_lines() {
        let me = "alice";
        assert_eq!(Input::parse("hi there", me), Input::Say("hi there".into()));
        assert_eq!(
            Input::parse("@bob hi there", me),
            Input::SayTo(Target::User("bob".into()), "hi there".into())
        );
        assert_eq!(
            Input::parse("#g_1 yo", me),
            Input::SayTo(Target::Group("g_1".into()), "yo".into())
        );
        assert_eq!(
            Input::parse("@bob", me),
            Input::Switch(Target::User("bob".into()))
        );
        assert_eq!(
            Input::parse("/to bob", me),
            Input::Switch(Target::User("bob".into()))
        );
        assert_eq!(
            Input::parse("/to dm:alice:bob", me),
            Input::Switch(Target::User("bob".into()))
        );
        assert_eq!(
            Input::parse("/group Trip", me),
            Input::Switch(Target::Group("Trip".into()))
        );
        assert_eq!(Input::parse("/history", me), Input::History(20));
        assert_eq!(Input::parse("/history 5", me), Input::History(5));
        assert!(matches!(
            Input::parse("/history 500", me),
            Input::Invalid(_)
        ));
        assert!(matches!(Input::parse("/to", me), Input::Invalid(_)));
        assert!(matches!(Input::parse("/dance", me), Input::Invalid(_)));
        assert_eq!(Input::parse("/quit", me), Input::Quit);
        assert_eq!(Input::parse("/who", me), Input::Who);
        let bob = Target::parse("bob", me).unwrap();
        assert_eq!(bob.conversation(me).unwrap().to_string(), "dm:alice:bob");
        assert_eq!(bob.conversation("zoe").unwrap().to_string(), "dm:bob:zoe");
        assert_eq!(
            Target::parse("#g_1", me)
                .unwrap()
                .conversation(me)
                .unwrap()
                .to_string(),
            "group:g_1"
        );
        assert!(Target::parse("alice", me)
            .unwrap()
            .conversation(me)
            .is_err());
        assert_eq!(Input::parse("   ", me), Input::Empty);
        assert_eq!(
            Input::parse(r#"{"type":"ack"}"#, me),
            Input::Raw(r#"{"type":"ack"}"#.into())
        );
    }

    #[test]
    fn messages_read_like_a_chat() {
        let names = HashMap::from([("g_7f3a".to_owned(), "Trip".to_owned())]);
        let ts: u64 = 1_763_800_000_123; // 08:26:40 UTC
        let dm = json!({"conversation":"dm:alice:bob","seq":3,"from":"alice","id":"c","body":"hi","ts":ts});
        assert_eq!(line(&dm, &names), "[08:26] alice → bob: hi");
        let back = json!({"conversation":"dm:alice:bob","seq":4,"from":"bob","id":"d","body":"yo","ts":ts});
        assert_eq!(line(&back, &names), "[08:26] bob → alice: yo");
        let group = json!({"conversation":"group:g_7f3a","group":"g_7f3a","seq":5,"from":"bob","id":"e","body":"all","ts":ts});
        assert_eq!(line(&group, &names), "[08:26] bob → #Trip: all");
        let unknown =
            json!({"conversation":"group:g_9","seq":5,"from":"bob","id":"e","body":"x","ts":ts});
        assert_eq!(line(&unknown, &names), "[08:26] bob → #g_9: x");
        let added = json!({"conversation":"group:g_7f3a","group":"g_7f3a","seq":6,"from":"bob","id":"f","body":"","ts":ts,"event":{"kind":"member_added","user":"dave"}});
        assert_eq!(line(&added, &names), "[08:26] * bob added dave to #Trip");
        let left = json!({"conversation":"group:g_7f3a","seq":7,"from":"dave","id":"g","body":"","ts":ts,"event":{"kind":"member_removed","user":"dave"}});
        assert_eq!(line(&left, &names), "[08:26] * dave left #Trip");
    }
}
