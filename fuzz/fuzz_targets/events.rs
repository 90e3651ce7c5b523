//! The other triggers' events: the first byte picks the function, the rest is its event's
//! JSON, read as the function reads it. `offline-delivery` (an MSK event of `user_connected` records), `group-events` (the
//! group table's DynamoDB stream), `sequencer` (`{"requests":[…]}` over an in-memory
//! allocator). Never a panic; what the sequencer hands out is within its limits.
#![no_main]

use aws_lambda_events::event::dynamodb::Event;
use connect_core::memory::Memory;
use connect_core::sequencer::{allocate, Allocate, MAX_COUNT, MAX_REQUESTS};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&which, json)) = data.split_first() else {
        return;
    };
    match which % 3 {
        0 => {
            if let Ok(event) = serde_json::from_slice::<connect_events::MskEvent>(json) {
                for c in connect_events::user_connected(&event) {
                    assert!(!c.user.as_str().is_empty());
                }
            }
        }
        1 => {
            if let Ok(event) = serde_json::from_slice::<Event>(json) {
                let changes = connect_events::group_changes(&event);
                assert!(changes.len() <= event.records.len());
            }
        }
        _ => {
            if let Ok(request) = serde_json::from_slice::<Allocate>(json) {
                let asked = request.requests.len();
                let memory = Memory::default();
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .build()
                    .unwrap();
                if let Ok(done) = runtime.block_on(allocate(&memory, request)) {
                    assert!(asked <= MAX_REQUESTS);
                    assert_eq!(done.ranges.len(), asked);
                    for r in done.ranges {
                        if let (Some(first), Some(last)) = (r.first, r.last) {
                            assert!(first >= 1 && first <= last && last - first < MAX_COUNT);
                        }
                    }
                }
            }
        }
    }
});
