//! End-to-end test crate: the tests live in `e2e/`, `regions/` and `memory/`; what they share
//! (clients over real WebSockets to the running stack, direct reads of its backends) is
//! [`helpers`]. A test-support library: never a dependency of anything shipped.

pub mod helpers;
