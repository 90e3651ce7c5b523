//! HS256 JWT auth as PROTOCOL.md states it: `sub` = user id, `exp` required.

use jsonwebtoken::{decode, encode, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use connect_protocol::UserId;

/// The documented development secret of the local stack. Refused in production.
pub const DEV_SECRET: &str = "connect-dev-secret";

/// The header that carries the internal token on a gateway's `/@connections` calls.
pub const INTERNAL_TOKEN_HEADER: &str = "x-connect-internal-token";

/// The local stack's internal token for a gateway's `/@connections` API. Refused in production.
pub const DEV_INTERNAL_TOKEN: &str = "connect-dev-internal";

/// Why a token or a secret is refused.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("invalid token: {0}")]
    InvalidToken(String),
    #[error("{0} is not set (only CONNECT_ENV=local falls back to the development value)")]
    NoSecret(&'static str),
    #[error("{0} is the public development value; it is accepted only with CONNECT_ENV=local")]
    DevSecretInProduction(&'static str),
    #[error("{0} is {1} bytes; outside CONNECT_ENV=local a secret has at least {MIN_SECRET_BYTES} (HS256 wants a key as long as its hash)")]
    SecretTooShort(&'static str, usize),
    #[error("{0}: {1}")]
    BadSetting(&'static str, String),
}

/// The shortest secret a production start takes: HS256's key should be at least its 256-bit hash
/// (RFC 7518 §3.2); a guessable short secret lets anyone mint tokens for anyone.
pub const MIN_SECRET_BYTES: usize = 32;

/// A secret from env var `name`'s value. On the local stack (`production` false: `CONNECT_ENV=local`)
/// unset means `dev`; anywhere else unset, empty, `dev` or shorter than [`MIN_SECRET_BYTES`] is
/// refused: auth fails closed.
pub fn secret(
    name: &'static str,
    value: Option<String>,
    production: bool,
    dev: &str,
) -> Result<String, AuthError> {
    match value.filter(|v| !v.is_empty()) {
        Some(v) if production && v == dev => Err(AuthError::DevSecretInProduction(name)),
        Some(v) if production && v.len() < MIN_SECRET_BYTES => {
            Err(AuthError::SecretTooShort(name, v.len()))
        }
        Some(v) => Ok(v),
        None if production => Err(AuthError::NoSecret(name)),
        None => Ok(dev.to_owned()),
    }
}

/// `CONNECT_INTERNAL_TOKEN`: what a gateway's management API wants in
/// `x-connect-internal-token`, and what the offline-delivery function sends.
pub fn internal_token(settings: &connect_config::Settings) -> Result<String, AuthError> {
    secret(
        "CONNECT_INTERNAL_TOKEN",
        settings.optional("CONNECT_INTERNAL_TOKEN"),
        settings.production(),
        DEV_INTERNAL_TOKEN,
    )
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
    /// Issued at: with it, the lifetime is `exp - iat`; without it, `exp - now`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    iat: Option<u64>,
}

/// What a token must say beyond `sub` and `exp` (`CONNECT_JWT_ISSUER`, `CONNECT_JWT_AUDIENCE`,
/// `CONNECT_JWT_MAX_LIFETIME_SECS`). `nbf` is always honoured when a token has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRules {
    /// When set, `iss` must be present and equal.
    pub issuer: Option<String>,
    /// When set, `aud` must be present and name it. When unset, a token with an `aud` is
    /// refused (RFC 7519 §4.1.3: it was meant for someone else).
    pub audience: Option<String>,
    /// The longest a token may live: `exp - iat` (or `exp - now` without `iat`). A stolen
    /// token is useful for at most this long.
    pub max_lifetime_secs: u64,
}

/// [`TokenRules::max_lifetime_secs`]' default: a day.
pub const MAX_LIFETIME_SECS: u64 = 24 * 3600;

impl Default for TokenRules {
    fn default() -> Self {
        Self {
            issuer: None,
            audience: None,
            max_lifetime_secs: MAX_LIFETIME_SECS,
        }
    }
}

impl TokenRules {
    /// From `CONNECT_JWT_ISSUER`, `CONNECT_JWT_AUDIENCE` (both optional) and
    /// `CONNECT_JWT_MAX_LIFETIME_SECS` (default a day, at least 60).
    pub fn from_settings(settings: &connect_config::Settings) -> Result<Self, AuthError> {
        let max_lifetime_secs = settings
            .parsed("CONNECT_JWT_MAX_LIFETIME_SECS", MAX_LIFETIME_SECS)
            .map_err(|e| AuthError::BadSetting("CONNECT_JWT_MAX_LIFETIME_SECS", e.reason))?;
        if max_lifetime_secs < 60 {
            return Err(AuthError::BadSetting(
                "CONNECT_JWT_MAX_LIFETIME_SECS",
                format!("{max_lifetime_secs} is under a minute"),
            ));
        }
        Ok(Self {
            issuer: settings.optional("CONNECT_JWT_ISSUER"),
            audience: settings.optional("CONNECT_JWT_AUDIENCE"),
            max_lifetime_secs,
        })
    }
}

/// The HS256 secret, checked once at start.
#[derive(Clone)]
pub struct JwtSecret(String);

impl std::fmt::Debug for JwtSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JwtSecret(<redacted>)")
    }
}

impl JwtSecret {
    /// The secret from `CONNECT_JWT_SECRET`'s value. Outside production an unset secret means the
    /// development secret; in production an unset, empty or development secret is refused.
    pub fn new(value: Option<String>, production: bool) -> Result<Self, AuthError> {
        secret("CONNECT_JWT_SECRET", value, production, DEV_SECRET).map(Self)
    }

    /// `CONNECT_JWT_SECRET_PREVIOUS`: while the secret is rotated, tokens signed with the one
    /// before are still taken (none are signed with it). Unset means none, anywhere; the
    /// development secret is refused in production here too.
    pub fn previous(value: Option<String>, production: bool) -> Result<Option<Self>, AuthError> {
        match value.filter(|v| !v.is_empty()) {
            None => Ok(None),
            Some(v) => secret(
                "CONNECT_JWT_SECRET_PREVIOUS",
                Some(v),
                production,
                DEV_SECRET,
            )
            .map(|v| Some(Self(v))),
        }
    }

    /// Both from the settings: `CONNECT_JWT_SECRET` and `CONNECT_JWT_SECRET_PREVIOUS`, with
    /// production's checks unless `CONNECT_ENV=local`.
    pub fn from_settings(
        settings: &connect_config::Settings,
    ) -> Result<(Self, Option<Self>), AuthError> {
        let production = settings.production();
        Ok((
            Self::new(settings.optional("CONNECT_JWT_SECRET"), production)?,
            Self::previous(settings.optional("CONNECT_JWT_SECRET_PREVIOUS"), production)?,
        ))
    }
}

/// The longest token looked at (`GATEWAY_MAX_TOKEN_BYTES`): ours are about 150 bytes; a longer
/// one is refused before it is decoded.
pub const MAX_TOKEN_BYTES: usize = 4096;

/// The user a token speaks for, and until when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub user: UserId,
    /// The token's `exp`, seconds since the epoch.
    pub exp: u64,
}

/// What a refused token is answered with (gateway upgrade and HTTP API alike): the reason stays
/// in the server's log, so the answer tells an attacker nothing about which check failed.
pub const REFUSED: &str = "invalid or expired token";

/// Seconds a token is still taken after its `exp` (clock skew between issuer and gateway).
pub const LEEWAY_SECS: u64 = 5;

/// Verifies client tokens: HS256 only (`alg: none` and every other algorithm are refused),
/// `exp` and `sub` required, `nbf` honoured, [`TokenRules`] applied, at most [`MAX_TOKEN_BYTES`]
/// (or what [`TokenVerifier::max_len`] sets).
#[derive(Clone)]
pub struct TokenVerifier {
    /// The current secret's key, then the previous one's while a rotation is under way.
    keys: Vec<DecodingKey>,
    validation: Validation,
    max_len: usize,
    max_lifetime_secs: u64,
}

impl TokenVerifier {
    /// A verifier with the default [`TokenRules`].
    pub fn new(secret: &JwtSecret) -> Self {
        Self::with_rules(secret, &TokenRules::default())
    }

    pub fn with_rules(secret: &JwtSecret, rules: &TokenRules) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        let mut required = vec!["exp", "sub"];
        if let Some(issuer) = &rules.issuer {
            validation.set_issuer(&[issuer]);
            required.push("iss");
        }
        if let Some(audience) = &rules.audience {
            validation.set_audience(&[audience]);
            required.push("aud");
        }
        validation.set_required_spec_claims(&required);
        validation.validate_nbf = true;
        validation.leeway = LEEWAY_SECS;
        Self {
            keys: vec![DecodingKey::from_secret(secret.0.as_bytes())],
            validation,
            max_len: MAX_TOKEN_BYTES,
            max_lifetime_secs: rules.max_lifetime_secs,
        }
    }

    /// Also takes tokens signed with `previous` (a secret being rotated out).
    pub fn also(mut self, previous: Option<&JwtSecret>) -> Self {
        if let Some(p) = previous {
            self.keys.push(DecodingKey::from_secret(p.0.as_bytes()));
        }
        self
    }

    /// Refuses tokens longer than `bytes`.
    pub fn max_len(mut self, bytes: usize) -> Self {
        self.max_len = bytes;
        self
    }

    /// The user a valid token speaks for.
    pub fn verify(&self, token: &str) -> Result<UserId, AuthError> {
        self.verify_until(token).map(|v| v.user)
    }

    /// The user a valid token speaks for, with its expiry.
    pub fn verify_until(&self, token: &str) -> Result<Verified, AuthError> {
        if token.len() > self.max_len {
            return Err(AuthError::InvalidToken(format!(
                "longer than {} bytes",
                self.max_len
            )));
        }
        let mut result = decode::<Claims>(token, &self.keys[0], &self.validation);
        for key in &self.keys[1..] {
            match &result {
                Err(e) if *e.kind() == jsonwebtoken::errors::ErrorKind::InvalidSignature => {
                    result = decode::<Claims>(token, key, &self.validation);
                }
                _ => break,
            }
        }
        let data = result.map_err(|e| AuthError::InvalidToken(e.to_string()))?;
        // The time left, and (with `iat`) the whole life: neither past the maximum.
        let now = crate::now_ms() / 1000;
        let lives = data
            .claims
            .iat
            .map_or(0, |iat| data.claims.exp.saturating_sub(iat))
            .max(data.claims.exp.saturating_sub(now));
        if lives > self.max_lifetime_secs.saturating_add(LEEWAY_SECS) {
            return Err(AuthError::InvalidToken(format!(
                "lives {lives} s, longer than the {} s allowed",
                self.max_lifetime_secs
            )));
        }
        let user = UserId::parse(data.claims.sub)
            .map_err(|e| AuthError::InvalidToken(format!("sub: {e}")))?;
        Ok(Verified {
            user,
            exp: data.claims.exp,
        })
    }
}

/// Mints tokens (dev CLI, load generator, tests).
#[derive(Clone)]
pub struct TokenIssuer {
    key: EncodingKey,
}

impl TokenIssuer {
    pub fn new(secret: &JwtSecret) -> Self {
        Self {
            key: EncodingKey::from_secret(secret.0.as_bytes()),
        }
    }

    /// A token for `user` that expires at `exp` (seconds since the epoch).
    pub fn mint_until(&self, user: &str, exp: u64) -> String {
        self.sign(&Claims {
            sub: user.to_owned(),
            exp,
            iat: None,
        })
    }

    /// A token carrying `claims` as they are (tests of the checks, tools that add `iss`/`aud`).
    pub fn sign<T: Serialize>(&self, claims: &T) -> String {
        encode(&Header::new(Algorithm::HS256), claims, &self.key).unwrap_or_default()
    }

    /// A token for `user` valid for `ttl_secs` from now (issued now).
    pub fn mint(&self, user: &str, ttl_secs: u64) -> String {
        let now = crate::now_ms() / 1000;
        self.sign(&Claims {
            sub: user.to_owned(),
            exp: now + ttl_secs,
            iat: Some(now),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev() -> JwtSecret {
        JwtSecret::new(None, false).unwrap()
    }

    #[test]
    fn during_a_rotation_tokens_of_the_previous_secret_are_taken() {
        let old = JwtSecret::new(Some("the-old-secret-".repeat(3)), true).unwrap();
        let new = JwtSecret::new(Some("the-new-secret-".repeat(3)), true).unwrap();
        let stranger = JwtSecret::new(Some("someone-elses-".repeat(3)), true).unwrap();
        let by_old = TokenIssuer::new(&old).mint("alice", 60);
        let by_new = TokenIssuer::new(&new).mint("bob", 60);
        let rotating = TokenVerifier::new(&new).also(Some(&old));
        assert_eq!(rotating.verify(&by_old).unwrap().as_str(), "alice");
        assert_eq!(rotating.verify(&by_new).unwrap().as_str(), "bob");
        assert!(rotating
            .verify(&TokenIssuer::new(&stranger).mint("eve", 60))
            .is_err());
        // Expired under the old secret stays refused (only a bad signature tries the next key).
        let expired = TokenIssuer::new(&old).mint_until("alice", 1);
        assert!(rotating.verify(&expired).is_err());
        // After the rotation: the old secret's tokens are refused.
        assert!(TokenVerifier::new(&new).also(None).verify(&by_old).is_err());
        // The previous secret is optional everywhere; the development one is refused in production.
        assert!(JwtSecret::previous(None, true).unwrap().is_none());
        assert!(JwtSecret::previous(Some(DEV_SECRET.into()), true).is_err());
        assert!(JwtSecret::previous(Some(DEV_SECRET.into()), false)
            .unwrap()
            .is_some());
    }

    #[test]
    fn a_minted_token_verifies() {
        let t = TokenIssuer::new(&dev()).mint("alice", 60);
        assert_eq!(
            TokenVerifier::new(&dev()).verify(&t).unwrap().as_str(),
            "alice"
        );
    }

    #[test]
    fn bad_tokens_are_refused() {
        let verifier = TokenVerifier::new(&dev());
        let other = JwtSecret::new(Some("other".into()), false).unwrap();
        assert!(verifier
            .verify(&TokenIssuer::new(&other).mint("alice", 60))
            .is_err());
        assert!(verifier
            .verify(&TokenIssuer::new(&dev()).mint_until("alice", 1000))
            .is_err());
        assert!(verifier
            .verify(&TokenIssuer::new(&dev()).mint("bad user", 60))
            .is_err());
        assert!(verifier.verify("not.a.jwt").is_err());
        assert!(verifier.verify("").is_err());
    }

    /// A token with any header and claims, signed with HMAC-`alg` over the development secret
    /// (or unsigned for `none`), built by hand as an attacker would.
    fn forged(header: &str, claims: &str, sign: Option<Algorithm>) -> String {
        use base64::Engine;
        let b64 = |s: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        let message = format!("{}.{}", b64(header.as_bytes()), b64(claims.as_bytes()));
        let signature = match sign {
            None => String::new(),
            Some(alg) => jsonwebtoken::crypto::sign(
                message.as_bytes(),
                &EncodingKey::from_secret(DEV_SECRET.as_bytes()),
                alg,
            )
            .unwrap(),
        };
        format!("{message}.{signature}")
    }

    #[test]
    fn forged_and_oversized_tokens_are_refused() {
        let verifier = TokenVerifier::new(&dev());
        let exp = crate::now_ms() / 1000 + 600;
        let claims = format!(r#"{{"sub":"alice","exp":{exp}}}"#);
        // The hand-built token is accepted when it is honest: the refusals below are real.
        let honest = forged(
            r#"{"alg":"HS256","typ":"JWT"}"#,
            &claims,
            Some(Algorithm::HS256),
        );
        assert_eq!(verifier.verify(&honest).unwrap().as_str(), "alice");
        let attacks = [
            (
                "alg none",
                forged(r#"{"alg":"none","typ":"JWT"}"#, &claims, None),
            ),
            (
                "alg none, signature kept",
                forged(r#"{"alg":"none"}"#, &claims, Some(Algorithm::HS256)),
            ),
            (
                "HS512",
                forged(r#"{"alg":"HS512"}"#, &claims, Some(Algorithm::HS512)),
            ),
            (
                "header says HS512, signed HS256",
                forged(r#"{"alg":"HS512"}"#, &claims, Some(Algorithm::HS256)),
            ),
            (
                "RS256 header",
                forged(r#"{"alg":"RS256"}"#, &claims, Some(Algorithm::HS256)),
            ),
            (
                "missing exp",
                forged(
                    r#"{"alg":"HS256"}"#,
                    r#"{"sub":"alice"}"#,
                    Some(Algorithm::HS256),
                ),
            ),
            (
                "missing sub",
                forged(
                    r#"{"alg":"HS256"}"#,
                    &format!(r#"{{"exp":{exp}}}"#),
                    Some(Algorithm::HS256),
                ),
            ),
            (
                "exp as a string",
                forged(
                    r#"{"alg":"HS256"}"#,
                    &format!(r#"{{"sub":"alice","exp":"{exp}"}}"#),
                    Some(Algorithm::HS256),
                ),
            ),
            (
                "1 MB",
                forged(
                    r#"{"alg":"HS256"}"#,
                    &format!(
                        r#"{{"sub":"alice","exp":{exp},"pad":"{}"}}"#,
                        "x".repeat(1 << 20)
                    ),
                    Some(Algorithm::HS256),
                ),
            ),
        ];
        for (what, token) in attacks {
            assert!(verifier.verify(&token).is_err(), "{what}");
        }
        let exp_of = verifier.verify_until(&honest).unwrap().exp;
        assert_eq!(exp_of, exp);
        assert!(TokenVerifier::new(&dev())
            .max_len(10)
            .verify(&honest)
            .is_err());
    }

    #[test]
    fn production_refuses_missing_or_dev_secret() {
        assert!(JwtSecret::new(None, true).is_err());
        assert!(JwtSecret::new(Some(String::new()), true).is_err());
        assert!(JwtSecret::new(Some(DEV_SECRET.into()), true).is_err());
        assert!(JwtSecret::new(Some("x".repeat(MIN_SECRET_BYTES)), true).is_ok());
        // A short secret: refused in production (the previous one too), taken on the local stack.
        for short in ["a", "0123456789abcdef"] {
            assert!(matches!(
                JwtSecret::new(Some(short.into()), true),
                Err(AuthError::SecretTooShort(_, n)) if n == short.len()
            ));
            assert!(JwtSecret::previous(Some(short.into()), true).is_err());
            assert!(JwtSecret::new(Some(short.into()), false).is_ok());
        }
        assert!(JwtSecret::new(Some("x".repeat(MIN_SECRET_BYTES - 1)), true).is_err());
    }

    fn signed(claims: &str) -> String {
        forged(
            r#"{"alg":"HS256","typ":"JWT"}"#,
            claims,
            Some(Algorithm::HS256),
        )
    }

    #[test]
    fn issuer_audience_not_before_and_lifetime_are_checked() {
        let now = crate::now_ms() / 1000;
        let exp = now + 600;
        let plain = TokenVerifier::new(&dev());
        let rules = TokenRules {
            issuer: Some("https://auth.example".into()),
            audience: Some("connect-chat".into()),
            max_lifetime_secs: 3600,
        };
        let strict = TokenVerifier::with_rules(&dev(), &rules);
        let good = signed(&format!(
            r#"{{"sub":"alice","exp":{exp},"iss":"https://auth.example","aud":"connect-chat"}}"#
        ));
        assert_eq!(strict.verify(&good).unwrap().as_str(), "alice");
        let in_a_list = signed(&format!(
            r#"{{"sub":"alice","exp":{exp},"iss":"https://auth.example","aud":["other","connect-chat"]}}"#
        ));
        assert!(strict.verify(&in_a_list).is_ok());
        let refused = [
            (
                "no aud",
                format!(r#"{{"sub":"a","exp":{exp},"iss":"https://auth.example"}}"#),
            ),
            (
                "wrong aud",
                format!(r#"{{"sub":"a","exp":{exp},"iss":"https://auth.example","aud":"other"}}"#),
            ),
            (
                "no iss",
                format!(r#"{{"sub":"a","exp":{exp},"aud":"connect-chat"}}"#),
            ),
            (
                "wrong iss",
                format!(r#"{{"sub":"a","exp":{exp},"iss":"https://evil","aud":"connect-chat"}}"#),
            ),
        ];
        for (what, claims) in refused {
            assert!(strict.verify(&signed(&claims)).is_err(), "{what}");
        }
        // Without an audience configured, a token meant for someone else is refused; one
        // without `aud` or `iss` is taken.
        assert!(plain.verify(&good).is_err());
        assert!(plain
            .verify(&signed(&format!(r#"{{"sub":"a","exp":{exp}}}"#)))
            .is_ok());
        // nbf: in the future refused, past taken (within the leeway too).
        let nbf = |at: u64| signed(&format!(r#"{{"sub":"a","exp":{exp},"nbf":{at}}}"#));
        assert!(plain.verify(&nbf(now + 120)).is_err());
        assert!(plain.verify(&nbf(now - 10)).is_ok());
        assert!(plain.verify(&nbf(now + 1)).is_ok());
        // Lifetime: exp - iat, or exp - now without iat.
        let lives = |iat: Option<u64>, exp: u64| {
            let iat = iat.map(|i| format!(r#","iat":{i}"#)).unwrap_or_default();
            signed(&format!(r#"{{"sub":"a","exp":{exp}{iat}}}"#))
        };
        let short = TokenVerifier::with_rules(
            &dev(),
            &TokenRules {
                max_lifetime_secs: 3600,
                ..TokenRules::default()
            },
        );
        assert!(short.verify(&lives(None, now + 3000)).is_ok());
        assert!(short.verify(&lives(None, now + 4000)).is_err());
        assert!(short.verify(&lives(Some(now), now + 3600)).is_ok());
        assert!(short.verify(&lives(Some(now - 7200), now + 60)).is_err());
        // An `iat` in the future does not stretch it.
        assert!(short.verify(&lives(Some(now + 7000), now + 7200)).is_err());
        assert!(plain.verify(&lives(None, now + 30 * 24 * 3600)).is_err());
        // The default lifetime takes what our tools mint.
        assert!(plain
            .verify(&TokenIssuer::new(&dev()).mint("a", MAX_LIFETIME_SECS))
            .is_ok());
    }
}
