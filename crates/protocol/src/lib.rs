//! The client contract of Connect Chat (`shared/PROTOCOL.md`) as Rust types. No I/O.
//!
//! # Layout
//! - [`ids`]: "parse, don't validate" newtypes — [`UserId`], [`ClientMsgId`], [`GroupId`],
//!   [`ConversationId`] — each with the exact rules of the contract.
//! - [`frames`]: WebSocket frames. [`ClientFrame::parse`] turns a text frame into a typed frame or
//!   a [`FrameError`] that carries the contract's error code; [`ServerFrame`] renders the frames
//!   the server sends.
//! - [`error`]: [`ErrorCode`], the contract's error codes.

pub mod error;
pub mod frames;
pub mod ids;

pub use error::ErrorCode;
pub use frames::{
    Always, ClientFrame, FrameError, FrameLimits, GroupEvent, MessageFrame, Presence, SendTarget,
    ServerFrame,
};
pub use ids::{ClientMsgId, ConversationId, GroupId, IdError, UserId};
