//! Secret settings from AWS Secrets Manager.
//!
//! A deployment gives a secret's ARN instead of its value (`template.yaml`: the Lambdas' env
//! then holds no secret); [`load`] fetches each named ARN once at startup and hands the values
//! in place of the settings they stand for, so the settings read as usual:
//!
//! | variable | secret | becomes |
//! |---|---|---|
//! | `CONNECT_JWT_SECRET_ARN` | a string | `CONNECT_JWT_SECRET` |
//! | `CONNECT_JWT_SECRET_PREVIOUS_ARN` | a string (a secret being rotated out) | `CONNECT_JWT_SECRET_PREVIOUS` |
//! | `CONNECT_INTERNAL_TOKEN_ARN` | a string | `CONNECT_INTERNAL_TOKEN` |
//! | `CONNECT_VAPID_PRIVATE_KEY_ARN` | a string (the VAPID private key, base64url) | `CONNECT_VAPID_PRIVATE_KEY` |
//! | `REDIS_AUTH_SECRET_ARN` | a string (ElastiCache's AUTH token) | `REDIS_PASSWORD` |
//! | `KAFKA_SASL_SECRET_ARN` | MSK's SCRAM secret, `{"username": …, "password": …}` | `KAFKA_SASL_USERNAME`, `KAFKA_SASL_PASSWORD` |
//!
//! A value fetched from a secret takes the place of the same variable set directly; with
//! neither, the setting keeps its usual default (and production refuses to start without a
//! secret, `connect_core::auth`). ECS tasks get theirs injected by ECS (`Secrets` in the task
//! definitions) and need none of this.

use std::collections::HashMap;

/// Why the secrets could not be loaded. `Fetch` may pass (Secrets Manager unreachable or
/// throttled: a later cold start tries again); the others are final (the deployment names a
/// secret that does not hold what it should).
#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    #[error("{var}: reading {arn} from Secrets Manager: {cause}")]
    Fetch {
        var: &'static str,
        arn: String,
        cause: String,
    },
    #[error("{var}: {what}")]
    Shape { var: &'static str, what: String },
}

impl SecretsError {
    /// Whether trying again may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Fetch { .. })
    }
}

/// What one secret fills in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// The secret string is the setting's value.
    Value(&'static str),
    /// A JSON object; each listed key fills `(key, setting)`.
    Fields(&'static [(&'static str, &'static str)]),
}

/// The ARN variables this process may be given, and what each fills in.
const SECRETS: &[(&str, Shape)] = &[
    ("CONNECT_JWT_SECRET_ARN", Shape::Value("CONNECT_JWT_SECRET")),
    (
        "CONNECT_JWT_SECRET_PREVIOUS_ARN",
        Shape::Value("CONNECT_JWT_SECRET_PREVIOUS"),
    ),
    (
        "CONNECT_INTERNAL_TOKEN_ARN",
        Shape::Value("CONNECT_INTERNAL_TOKEN"),
    ),
    (
        "CONNECT_VAPID_PRIVATE_KEY_ARN",
        Shape::Value("CONNECT_VAPID_PRIVATE_KEY"),
    ),
    ("REDIS_AUTH_SECRET_ARN", Shape::Value("REDIS_PASSWORD")),
    (
        "KAFKA_SASL_SECRET_ARN",
        Shape::Fields(&[
            ("username", "KAFKA_SASL_USERNAME"),
            ("password", "KAFKA_SASL_PASSWORD"),
        ]),
    ),
];

/// `settings` with every secret whose ARN setting is there fetched, in place of the settings it
/// stands for. Does nothing (no AWS call) when none is named.
pub async fn load(
    settings: connect_config::Settings,
) -> Result<connect_config::Settings, SecretsError> {
    let wanted: Vec<(&str, String, Shape)> = SECRETS
        .iter()
        .filter_map(|(var, shape)| settings.optional(var).map(|arn| (*var, arn, *shape)))
        .collect();
    if wanted.is_empty() {
        return Ok(settings);
    }
    let config = aws_config::load_from_env().await;
    let client = aws_sdk_secretsmanager::Client::new(&config);
    let mut values = HashMap::new();
    for (var, arn, shape) in wanted {
        let secret = client
            .get_secret_value()
            .secret_id(&arn)
            .send()
            .await
            .map_err(|e| SecretsError::Fetch {
                var,
                arn: arn.clone(),
                cause: aws_sdk_secretsmanager::error::DisplayErrorContext(e).to_string(),
            })?;
        let text = secret.secret_string().ok_or_else(|| SecretsError::Shape {
            var,
            what: format!("{arn} holds no string"),
        })?;
        values.extend(fields(var, shape, text)?);
        tracing::info!(variable = var, "secret loaded");
    }
    Ok(settings.with(values))
}

/// The settings one secret's string fills in.
fn fields(
    var: &'static str,
    shape: Shape,
    text: &str,
) -> Result<Vec<(String, String)>, SecretsError> {
    let shape_error = |what: String| SecretsError::Shape { var, what };
    match shape {
        Shape::Value(name) => Ok(vec![(name.to_owned(), text.to_owned())]),
        Shape::Fields(fields) => {
            let json: serde_json::Value = serde_json::from_str(text)
                .map_err(|_| shape_error("the secret is not a JSON object".into()))?;
            fields
                .iter()
                .map(|(key, name)| {
                    let v = json
                        .get(key)
                        .and_then(|v| v.as_str())
                        .ok_or_else(|| shape_error(format!("the secret has no string {key:?}")))?;
                    Ok(((*name).to_owned(), v.to_owned()))
                })
                .collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(var: &str) -> Shape {
        SECRETS.iter().find(|(v, _)| *v == var).unwrap().1
    }

    #[test]
    fn a_string_secret_is_the_setting() {
        assert_eq!(
            fields(
                "CONNECT_JWT_SECRET_ARN",
                shape("CONNECT_JWT_SECRET_ARN"),
                "s3cr3t"
            )
            .unwrap(),
            [("CONNECT_JWT_SECRET".to_owned(), "s3cr3t".to_owned())]
        );
    }

    #[test]
    fn the_msk_scram_secret_fills_user_and_password() {
        let got = fields(
            "KAFKA_SASL_SECRET_ARN",
            shape("KAFKA_SASL_SECRET_ARN"),
            r#"{"username": "connect", "password": "pw"}"#,
        )
        .unwrap();
        assert_eq!(
            got,
            [
                ("KAFKA_SASL_USERNAME".to_owned(), "connect".to_owned()),
                ("KAFKA_SASL_PASSWORD".to_owned(), "pw".to_owned())
            ]
        );
        let err = fields(
            "KAFKA_SASL_SECRET_ARN",
            shape("KAFKA_SASL_SECRET_ARN"),
            r#"{"username": "connect"}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("password"), "{err}");
        assert!(fields(
            "KAFKA_SASL_SECRET_ARN",
            shape("KAFKA_SASL_SECRET_ARN"),
            "plain"
        )
        .is_err());
    }

    /// Nothing named, nothing asked of AWS: the local stack and tests run without credentials.
    #[tokio::test]
    async fn without_arns_nothing_is_fetched() {
        let given = connect_config::Settings::from_pairs([("CONNECT_JWT_SECRET", "s")]);
        let loaded = load(given).await.unwrap();
        assert_eq!(loaded.optional("CONNECT_JWT_SECRET").as_deref(), Some("s"));
    }
}
