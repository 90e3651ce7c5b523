//! Lambda `push`: MSK trigger on `push_requests` (messaging emits one per message and registered
//! device of a recipient with no live connection). Per batch (`connect_core::push::deliver`):
//! the newest per (device, conversation), dropped if the device has acked it or connected since,
//! at most one per (device, conversation) per `PUSH_COLLAPSE_MS` (what the window holds back,
//! the newest winning, goes to `push_later` for `push-later` to send when the window closes),
//! with the recipient's unread count; a registration the push service calls dead (404/410) is
//! removed. Config: see the `push` library.

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    push::run(push::Role::Send, connect_config::Settings::from_process()).await
}
