//! The server's VAPID key pair (RFC 8292): it signs every Web Push request, and its public half
//! is what browsers subscribe with (`GET /v1/push/vapid`).

use base64::Engine as _;
use web_push_native::jwt_simple::algorithms::{ECDSAP256PublicKeyLike, ES256KeyPair};

use crate::PushError;

/// The development key pair (local stack only, like the development JWT secret): a production
/// configuration that names it is refused.
pub const DEVELOPMENT_PRIVATE_KEY: &str = "9YAmbNhDF4MG5SOPTiql-eUSNQARELWGM_QIYk4Ehec";

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// A VAPID key pair and the contact it signs with.
#[derive(Clone)]
pub struct Vapid {
    key: std::sync::Arc<ES256KeyPair>,
    public: String,
    contact: String,
}

impl std::fmt::Debug for Vapid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vapid")
            .field("public", &self.public)
            .field("contact", &self.contact)
            .finish_non_exhaustive()
    }
}

impl Vapid {
    /// From the private key (the 32-byte P-256 scalar, base64url) and a contact (`mailto:` or
    /// `https:` URL, RFC 8292 `sub`).
    pub fn new(private_key: &str, contact: &str) -> Result<Self, PushError> {
        let bytes = B64
            .decode(private_key.trim().trim_end_matches('='))
            .map_err(|_| PushError::Refused("VAPID private key is not base64url".into()))?;
        // (jwt-simple panics on another length.)
        if bytes.len() != 32 {
            return Err(PushError::Refused(
                "VAPID private key must be a 32-byte P-256 scalar".into(),
            ));
        }
        let key = ES256KeyPair::from_bytes(&bytes)
            .map_err(|e| PushError::Refused(format!("VAPID private key: {e}")))?;
        let point = key.public_key().public_key().to_bytes_uncompressed();
        if !(contact.starts_with("mailto:") || contact.starts_with("https://")) {
            return Err(PushError::Refused(
                "VAPID contact must be a mailto: or https: URL".into(),
            ));
        }
        Ok(Self {
            key: std::sync::Arc::new(key),
            public: B64.encode(point),
            contact: contact.to_owned(),
        })
    }

    /// A fresh key pair: (private key, public key), both base64url.
    pub fn generate() -> (String, String) {
        let key = ES256KeyPair::generate();
        let public = key.public_key().public_key().to_bytes_uncompressed();
        (B64.encode(key.to_bytes()), B64.encode(public))
    }

    /// The key pair a deployment runs with: `private_key` when given; without one, the
    /// development pair on the local stack only; outside it, the development pair is refused
    /// too (a deployment that forgot its key fails to start).
    pub fn configured(
        private_key: Option<&str>,
        contact: &str,
        local: bool,
    ) -> Result<Self, PushError> {
        let vapid = match private_key {
            Some(key) => Self::new(key, contact)?,
            None if local => Self::development(),
            None => {
                return Err(PushError::Refused(
                    "CONNECT_VAPID_PRIVATE_KEY is required outside the local stack".into(),
                ))
            }
        };
        if !local && vapid.is_development() {
            return Err(PushError::Refused(
                "the development VAPID key is refused outside the local stack".into(),
            ));
        }
        Ok(vapid)
    }

    /// The development key pair, for the local stack.
    pub fn development() -> Self {
        Self::new(DEVELOPMENT_PRIVATE_KEY, "mailto:dev@connect.local")
            .expect("the development VAPID key parses")
    }

    /// Whether this is the development key pair.
    pub fn is_development(&self) -> bool {
        self.public == Self::development().public
    }

    /// The public key, an uncompressed P-256 point in base64url (`applicationServerKey`).
    pub fn public_key(&self) -> &str {
        &self.public
    }

    pub(crate) fn key_pair(&self) -> &ES256KeyPair {
        &self.key
    }

    pub(crate) fn contact(&self) -> &str {
        &self.contact
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_public_key_is_an_uncompressed_point() {
        let v = Vapid::development();
        let point = B64.decode(v.public_key()).unwrap();
        assert_eq!((point.len(), point[0]), (65, 4));
        assert_eq!(
            v.public_key(),
            "BPzEwyx3K81k__lbPNILGxDrKFcLmEGxWFSL5SalGvPUdvo8jkfuufU8yj1TFrSw0eR2i7mgMEIqY0Yj1U4Gxlo"
        );
        assert!(v.is_development());
    }

    #[test]
    fn bad_keys_and_contacts_are_refused() {
        assert!(Vapid::new("not base64!", "mailto:a@b").is_err());
        assert!(Vapid::new("AAAA", "mailto:a@b").is_err());
        assert!(Vapid::new(DEVELOPMENT_PRIVATE_KEY, "a@b").is_err());
        let other =
            Vapid::new("kEFVU2Qq0a3_iO7r3ZfBFKH2VZgG6a9Qs9kSvHkyV8o", "mailto:a@b").unwrap();
        assert!(!other.is_development());
        assert!(Vapid::configured(None, "mailto:a@b", true)
            .unwrap()
            .is_development());
        assert!(Vapid::configured(None, "mailto:a@b", false).is_err());
        assert!(Vapid::configured(Some(DEVELOPMENT_PRIVATE_KEY), "mailto:a@b", false).is_err());
        let (private, public) = Vapid::generate();
        assert_eq!(
            Vapid::new(&private, "mailto:a@b").unwrap().public_key(),
            public
        );
    }
}
