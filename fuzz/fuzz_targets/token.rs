//! The token on an upgrade or an HTTP call: never a panic, and nothing but an HS256 token
//! signed with the secret is taken. Input beginning with a byte below 128 is used as it is;
//! otherwise it becomes a JWT's parts (a header and claims of the fuzzer's, signed with the
//! real secret), so the claim checks are reached too.
#![no_main]

use connect_core::auth::{JwtSecret, TokenIssuer, TokenVerifier};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let secret = JwtSecret::new(None, false).unwrap();
    let verifier = TokenVerifier::new(&secret);
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(rest);
    if first < 128 {
        if let Ok(user) = verifier.verify(&text) {
            // Only a token of ours verifies: the fuzzer cannot forge the signature.
            panic!("a fuzzed string verified as {user}");
        }
        return;
    }
    // A token minted for a fuzzed subject verifies only if the subject is a valid user id.
    let token = TokenIssuer::new(&secret).mint(&text, 600);
    if let Ok(user) = verifier.verify(&token) {
        assert_eq!(user.as_str(), text);
    }
});
