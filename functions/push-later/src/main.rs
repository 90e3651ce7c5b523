//! Lambda `push-later`: MSK trigger on `push_later` (the pushes the `push` function held back
//! because their (device, conversation) had one less than `PUSH_COLLAPSE_MS` ago). Waits until
//! the batch's windows close (at most one window), then sends each window's newest held-back
//! push, checked again (`connect_core::push::flush`). A function of its own: its waiting never
//! holds up a first push. Config: see the `push` library.

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    push::run(push::Role::Later, connect_config::Settings::from_process()).await
}
