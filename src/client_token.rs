//! Short-lived client tokens for browsers (EdDSA JWTs): an application's
//! backend signs one for one TURN host, the browser presents it as a bearer
//! token, and TURN hosts hold only public keys.
//!
//! `jsonwebtoken` checks the signature; the claims are checked here against
//! an instant the caller passes in, so every rule is unit-tested without a
//! clock: `exp` and `aud` are required, `nbf` is honoured, a small leeway
//! absorbs clock skew, a token that lives longer than `max_lifetime` is
//! refused, and `sub` must be a name coturn takes in a username.

use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// Clock skew tolerated on `exp` and `nbf`.
pub const LEEWAY_SECS: u64 = 30;
/// The longest `sub` accepted: the longest user part the REST API mints.
pub const MAX_SUBJECT_BYTES: usize = 64;

/// Why a token was refused; the message goes into a 401 body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenRefusal {
    #[error("the client token is malformed")]
    Malformed,
    #[error("the client token's signature does not match a configured key")]
    BadSignature,
    #[error("the client token has expired")]
    Expired,
    #[error("the client token is not valid yet")]
    NotYetValid,
    #[error("the client token is for another audience")]
    WrongAudience,
    #[error("the client token lives longer than this host accepts")]
    TooLongLived,
    #[error("the client token's subject holds characters a TURN username cannot")]
    BadSubject,
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("not an Ed25519 key in PEM form: {0}")]
    NotEd25519(jsonwebtoken::errors::Error),
    #[error("no public key configured")]
    NoKeys,
}

/// What a valid token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedToken {
    pub subject: Option<String>,
    pub expires_at: u64,
}

/// `aud` as JWT allows it: one string or a list.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    exp: u64,
    aud: Audience,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    nbf: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sub: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    iat: Option<u64>,
}

pub struct ClientTokenVerifier {
    keys: Vec<DecodingKey>,
    audience: String,
    max_lifetime: Duration,
}

impl std::fmt::Debug for ClientTokenVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTokenVerifier")
            .field("keys", &self.keys.len())
            .field("audience", &self.audience)
            .field("max_lifetime", &self.max_lifetime)
            .finish()
    }
}

impl ClientTokenVerifier {
    /// `public_keys_pem`: one or more `PUBLIC KEY` PEM documents (several
    /// while keys rotate).
    pub fn new(
        public_keys_pem: &[Vec<u8>],
        audience: String,
        max_lifetime: Duration,
    ) -> Result<ClientTokenVerifier, KeyError> {
        if public_keys_pem.is_empty() {
            return Err(KeyError::NoKeys);
        }
        let keys = public_keys_pem
            .iter()
            .map(|pem| DecodingKey::from_ed_pem(pem).map_err(KeyError::NotEd25519))
            .collect::<Result<_, _>>()?;
        Ok(ClientTokenVerifier {
            keys,
            audience,
            max_lifetime,
        })
    }

    /// Checks `token` at `now` (seconds since the epoch).
    pub fn verify(&self, token: &str, now: u64) -> Result<VerifiedToken, TokenRefusal> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenRefusal::Malformed)?;
        if header.alg != Algorithm::EdDSA {
            // Never let the token choose a weaker algorithm.
            return Err(TokenRefusal::BadSignature);
        }
        let mut validation = Validation::new(Algorithm::EdDSA);
        // Time and audience are checked below, against `now`.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        validation.required_spec_claims.clear();
        let mut claims = None;
        let mut malformed = false;
        for key in &self.keys {
            match jsonwebtoken::decode::<Claims>(token, key, &validation) {
                Ok(data) => {
                    claims = Some(data.claims);
                    break;
                }
                Err(error) => {
                    use jsonwebtoken::errors::ErrorKind;
                    if !matches!(error.kind(), ErrorKind::InvalidSignature) {
                        malformed = true;
                    }
                }
            }
        }
        let claims = claims.ok_or(if malformed {
            TokenRefusal::Malformed
        } else {
            TokenRefusal::BadSignature
        })?;
        if claims.exp.saturating_add(LEEWAY_SECS) <= now {
            return Err(TokenRefusal::Expired);
        }
        if claims
            .nbf
            .is_some_and(|nbf| nbf > now.saturating_add(LEEWAY_SECS))
        {
            return Err(TokenRefusal::NotYetValid);
        }
        let audience_matches = match &claims.aud {
            Audience::One(audience) => *audience == self.audience,
            Audience::Many(audiences) => audiences.contains(&self.audience),
        };
        if !audience_matches {
            return Err(TokenRefusal::WrongAudience);
        }
        let lifetime_limit = now
            .saturating_add(self.max_lifetime.as_secs())
            .saturating_add(LEEWAY_SECS);
        if claims.exp > lifetime_limit {
            return Err(TokenRefusal::TooLongLived);
        }
        if let Some(subject) = &claims.sub {
            if !is_valid_subject(subject) {
                return Err(TokenRefusal::BadSubject);
            }
        }
        Ok(VerifiedToken {
            subject: claims.sub,
            expires_at: claims.exp,
        })
    }
}

/// Characters that survive as the name part of a TURN REST username
/// (`<expiry>:<sub>`), in coturn's logs and in its CLI listing.
/// The same rule as a `?username=` (which would otherwise be replaced by
/// a random name: a subject is refused instead, never rewritten).
pub fn is_valid_subject(subject: &str) -> bool {
    subject.len() <= MAX_SUBJECT_BYTES && crate::turn_user::is_safe_user(subject)
}

#[derive(Debug, thiserror::Error)]
pub enum MintError {
    #[error("not an Ed25519 private key in PEM (PKCS#8) form: {0}")]
    Key(jsonwebtoken::errors::Error),
    #[error("the subject holds characters a TURN username cannot")]
    BadSubject,
    #[error("cannot sign: {0}")]
    Sign(jsonwebtoken::errors::Error),
}

/// Signs a token for `audience` (a TURN host's API address, `host:port`)
/// that expires `ttl` after `now`.
pub fn mint(
    private_key_pem: &[u8],
    audience: &str,
    subject: Option<&str>,
    ttl: Duration,
    now: u64,
) -> Result<String, MintError> {
    let key = EncodingKey::from_ed_pem(private_key_pem).map_err(MintError::Key)?;
    mint_with(&key, audience, subject, ttl, now)
}

/// [`mint`] with a key already loaded.
pub fn mint_with(
    key: &EncodingKey,
    audience: &str,
    subject: Option<&str>,
    ttl: Duration,
    now: u64,
) -> Result<String, MintError> {
    if subject.is_some_and(|subject| !is_valid_subject(subject)) {
        return Err(MintError::BadSubject);
    }
    let claims = Claims {
        exp: now.saturating_add(ttl.as_secs()),
        aud: Audience::One(audience.to_owned()),
        nbf: None,
        sub: subject.map(str::to_owned),
        iat: Some(now),
    };
    jsonwebtoken::encode(&Header::new(Algorithm::EdDSA), &claims, key).map_err(MintError::Sign)
}

/// Key pairs and hand-signed tokens for tests of this module and the guard.
#[cfg(test)]
pub(crate) mod test_keys {
    use super::*;
    use base64::Engine;

    pub fn pem(label: &str, der: &[u8]) -> Vec<u8> {
        let body = base64::engine::general_purpose::STANDARD.encode(der);
        let lines: Vec<&str> = body
            .as_bytes()
            .chunks(64)
            .map(|chunk| std::str::from_utf8(chunk).unwrap())
            .collect();
        format!(
            "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
            lines.join("\n")
        )
        .into_bytes()
    }

    /// (private PKCS#8 PEM, public SPKI PEM)
    pub fn key_pair() -> (Vec<u8>, Vec<u8>) {
        use ring::signature::KeyPair;
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        let pair = ring::signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        let mut spki = vec![
            0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
        ];
        spki.extend_from_slice(pair.public_key().as_ref());
        (pem("PRIVATE KEY", pkcs8.as_ref()), pem("PUBLIC KEY", &spki))
    }

    /// A token with exactly `claims`, signed with `private`.
    pub fn signed(private: &[u8], claims: serde_json::Value) -> String {
        let key = EncodingKey::from_ed_pem(private).unwrap();
        jsonwebtoken::encode(&Header::new(Algorithm::EdDSA), &claims, &key).unwrap()
    }
}

#[cfg(test)]
mod tests {
    use super::test_keys::*;
    use super::*;
    use base64::Engine;

    const NOW: u64 = 1_800_000_000;
    const AUDIENCE: &str = "turn1.example.net:8080";

    fn verifier(public: &[Vec<u8>]) -> ClientTokenVerifier {
        ClientTokenVerifier::new(public, AUDIENCE.into(), Duration::from_secs(600)).unwrap()
    }

    #[test]
    fn a_minted_token_verifies_with_its_subject() {
        let (private, public) = key_pair();
        let token = mint(
            &private,
            AUDIENCE,
            Some("alice"),
            Duration::from_secs(300),
            NOW,
        )
        .unwrap();
        assert_eq!(
            verifier(&[public]).verify(&token, NOW + 10),
            Ok(VerifiedToken {
                subject: Some("alice".into()),
                expires_at: NOW + 300
            })
        );
    }

    #[test]
    fn any_configured_key_verifies_during_a_rotation() {
        let (old_private, old_public) = key_pair();
        let (new_private, new_public) = key_pair();
        let both = verifier(&[old_public, new_public.clone()]);
        for private in [&old_private, &new_private] {
            let token = mint(private, AUDIENCE, None, Duration::from_secs(60), NOW).unwrap();
            assert!(both.verify(&token, NOW).is_ok());
        }
        let only_new = verifier(&[new_public]);
        let old = mint(&old_private, AUDIENCE, None, Duration::from_secs(60), NOW).unwrap();
        assert_eq!(only_new.verify(&old, NOW), Err(TokenRefusal::BadSignature));
    }

    #[test]
    fn time_rules_with_leeway() {
        let (private, public) = key_pair();
        let verifier = verifier(&[public]);
        let token = mint(&private, AUDIENCE, None, Duration::from_secs(60), NOW).unwrap();
        assert!(verifier.verify(&token, NOW + 60 + LEEWAY_SECS - 1).is_ok());
        assert_eq!(
            verifier.verify(&token, NOW + 60 + LEEWAY_SECS),
            Err(TokenRefusal::Expired)
        );
        let later = signed(
            &private,
            serde_json::json!({"exp": NOW + 300, "aud": AUDIENCE, "nbf": NOW + 120}),
        );
        assert_eq!(verifier.verify(&later, NOW), Err(TokenRefusal::NotYetValid));
        assert!(verifier.verify(&later, NOW + 120).is_ok());
    }

    #[test]
    fn a_token_living_longer_than_max_lifetime_is_refused() {
        let (private, public) = key_pair();
        let verifier = verifier(&[public]);
        let long = mint(&private, AUDIENCE, None, Duration::from_secs(3600), NOW).unwrap();
        assert_eq!(verifier.verify(&long, NOW), Err(TokenRefusal::TooLongLived));
    }

    #[test]
    fn audience_as_string_or_list() {
        let (private, public) = key_pair();
        let verifier = verifier(&[public]);
        let listed = signed(
            &private,
            serde_json::json!({"exp": NOW + 60, "aud": ["other:1", AUDIENCE]}),
        );
        assert!(verifier.verify(&listed, NOW).is_ok());
        let other = signed(
            &private,
            serde_json::json!({"exp": NOW + 60, "aud": "other:1"}),
        );
        assert_eq!(
            verifier.verify(&other, NOW),
            Err(TokenRefusal::WrongAudience)
        );
    }

    #[test]
    fn exp_and_aud_are_required() {
        let (private, public) = key_pair();
        let verifier = verifier(&[public]);
        let no_exp = signed(&private, serde_json::json!({"aud": AUDIENCE}));
        assert_eq!(verifier.verify(&no_exp, NOW), Err(TokenRefusal::Malformed));
        let no_aud = signed(&private, serde_json::json!({"exp": NOW + 60}));
        assert_eq!(verifier.verify(&no_aud, NOW), Err(TokenRefusal::Malformed));
    }

    #[test]
    fn subjects_coturn_cannot_take_are_refused_not_rewritten() {
        let (private, public) = key_pair();
        let verifier = verifier(&[public]);
        let long = "a".repeat(MAX_SUBJECT_BYTES + 1);
        for bad in ["a:b", "a b", "a\r\nb", "", "ü", "a+b", &long] {
            let token = signed(
                &private,
                serde_json::json!({"exp": NOW + 60, "aud": AUDIENCE, "sub": bad}),
            );
            assert_eq!(
                verifier.verify(&token, NOW),
                Err(TokenRefusal::BadSubject),
                "{bad:?}"
            );
        }
        assert!(matches!(
            mint(
                &private,
                AUDIENCE,
                Some("a:b"),
                Duration::from_secs(60),
                NOW
            ),
            Err(MintError::BadSubject)
        ));
    }

    #[test]
    fn other_algorithms_and_garbage_are_refused() {
        let (_, public) = key_pair();
        let verifier = verifier(&[public]);
        let hs256 = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &serde_json::json!({"exp": NOW + 60, "aud": AUDIENCE}),
            &EncodingKey::from_secret(b"guess"),
        )
        .unwrap();
        assert_eq!(
            verifier.verify(&hs256, NOW),
            Err(TokenRefusal::BadSignature)
        );
        let unsigned = "eyJhbGciOiJub25lIn0.eyJleHAiOjk5OTk5OTk5OTl9.";
        assert_eq!(verifier.verify(unsigned, NOW), Err(TokenRefusal::Malformed));
        for garbage in ["", "a.b.c", "not a token", "....."] {
            assert_eq!(verifier.verify(garbage, NOW), Err(TokenRefusal::Malformed));
        }
    }

    #[test]
    fn a_tampered_payload_fails_the_signature() {
        let (private, public) = key_pair();
        let verifier = verifier(&[public]);
        let token = mint(
            &private,
            AUDIENCE,
            Some("alice"),
            Duration::from_secs(60),
            NOW,
        )
        .unwrap();
        let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
        let forged = serde_json::json!({"exp": NOW + 60, "aud": AUDIENCE, "sub": "mallory"});
        parts[1] = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(forged.to_string());
        assert_eq!(
            verifier.verify(&parts.join("."), NOW),
            Err(TokenRefusal::BadSignature)
        );
    }
}
