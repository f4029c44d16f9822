//! A string that must never reach a log, a Debug dump or an error message.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Passwords and shared secrets. `Debug` and `Display` print `***`; the
/// value is reachable only through [`Secret::expose`], which makes every
/// place that handles the real value easy to find.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    /// A new password of 144 random bits in the URL-safe base64 alphabet
    /// (24 characters): turnadmin users, coturn's CLI.
    #[cfg(feature = "agent")]
    pub fn random_password() -> Secret {
        use base64::Engine;
        use rand::RngCore;
        let mut bytes = [0u8; 18];
        rand::rng().fill_bytes(&mut bytes);
        Secret(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_prints_its_value() {
        let secret = Secret::new("hunter2");
        assert_eq!(format!("{secret}"), "***");
        assert!(!format!("{secret:?}").contains("hunter2"));
        assert!(!format!("{:?}", Some(vec![secret.clone()])).contains("hunter2"));
        assert_eq!(secret.expose(), "hunter2");
        assert_eq!(serde_json::to_string(&secret).unwrap(), "\"hunter2\"");
    }
}
