//! Who may send custom events: what a TRIFFT webhook Authorization record can present
//! (reference/trifft.md §7.1), checked before the body is parsed.
//!
//! - Header Authentication: a secret header (name configurable, default `x-trifft-secret`)
//!   whose value is the secret.
//! - Basic Authentication: `Authorization: Basic base64(user:password)`, where the secret
//!   value is `user:password`.
//!
//! Each presented credential is compared with the current and the previous secret
//! (rotation). Comparisons are of SHA-256 digests in constant time, so neither the timing
//! nor the length of a guess tells how close it was; every pair is compared, with no early exit.

use base64::Engine as _;
use lambda_http::http::HeaderMap;
use lambda_http::http::header::AUTHORIZATION;
use loyalty_bridge::secrets::RotatingSecret;
use sha2::{Digest, Sha256};
use subtle::{Choice, ConstantTimeEq};

/// Why a request was refused; safe to send back (it reveals no secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthFailure {
    /// No credential at all.
    Missing,
    /// A credential that matches neither the current nor the previous secret.
    Wrong,
}

/// The credentials a request presents: the secret header's value and the decoded Basic
/// `user:password`, each when present.
fn presented(headers: &HeaderMap, secret_header: &str) -> Vec<Vec<u8>> {
    let mut found = Vec::new();
    for value in headers.get_all(secret_header) {
        found.push(value.as_bytes().to_vec());
    }
    for value in headers.get_all(AUTHORIZATION) {
        let Ok(text) = value.to_str() else { continue };
        let Some((scheme, encoded)) = text.trim().split_once(' ') else {
            continue;
        };
        if scheme.eq_ignore_ascii_case("basic")
            && let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(encoded.trim())
        {
            found.push(decoded);
        }
    }
    found
}

/// Accepts the request when any presented credential equals the current or previous secret.
pub fn authenticate(
    headers: &HeaderMap,
    secret_header: &str,
    secret: &RotatingSecret,
) -> Result<(), AuthFailure> {
    let presented = presented(headers, secret_header);
    if presented.is_empty() {
        return Err(AuthFailure::Missing);
    }
    let accepted: Vec<[u8; 32]> = secret
        .accepted()
        .filter(|s| !s.is_empty())
        .map(|s| digest(s.expose().as_bytes()))
        .collect();
    let mut ok = Choice::from(0);
    for p in &presented {
        let p = digest(p);
        for a in &accepted {
            ok |= p.ct_eq(a);
        }
    }
    if bool::from(ok) {
        Ok(())
    } else {
        Err(AuthFailure::Wrong)
    }
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use lambda_http::http::HeaderValue;
    use loyalty_bridge::secrets::SecretString;

    fn secret() -> RotatingSecret {
        RotatingSecret {
            current: SecretString::new("now-secret"),
            previous: Some(SecretString::new("old-secret")),
        }
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn header_current_and_previous_pass() {
        assert_eq!(
            authenticate(
                &headers(&[("x-trifft-secret", "now-secret")]),
                "x-trifft-secret",
                &secret()
            ),
            Ok(())
        );
        assert_eq!(
            authenticate(
                &headers(&[("x-trifft-secret", "old-secret")]),
                "x-trifft-secret",
                &secret()
            ),
            Ok(())
        );
    }

    #[test]
    fn wrong_or_missing_fail() {
        let s = secret();
        assert_eq!(
            authenticate(
                &headers(&[("x-trifft-secret", "now-secreT")]),
                "x-trifft-secret",
                &s
            ),
            Err(AuthFailure::Wrong)
        );
        assert_eq!(
            authenticate(
                &headers(&[("x-other", "now-secret")]),
                "x-trifft-secret",
                &s
            ),
            Err(AuthFailure::Missing)
        );
        assert_eq!(
            authenticate(&headers(&[("x-trifft-secret", "")]), "x-trifft-secret", &s),
            Err(AuthFailure::Wrong)
        );
    }

    #[test]
    fn basic_credentials_are_user_colon_password() {
        let s = RotatingSecret {
            current: SecretString::new("trifft:pa55:word"),
            previous: None,
        };
        let good = base64::engine::general_purpose::STANDARD.encode("trifft:pa55:word");
        let bad = base64::engine::general_purpose::STANDARD.encode("trifft:nope");
        let h = headers(&[("authorization", &format!("Basic {good}"))]);
        assert_eq!(authenticate(&h, "x-trifft-secret", &s), Ok(()));
        let h = headers(&[("authorization", &format!("basic  {good}"))]);
        assert_eq!(authenticate(&h, "x-trifft-secret", &s), Ok(()));
        let h = headers(&[("authorization", &format!("Basic {bad}"))]);
        assert_eq!(
            authenticate(&h, "x-trifft-secret", &s),
            Err(AuthFailure::Wrong)
        );
        let h = headers(&[("authorization", "Bearer trifft:pa55:word")]);
        assert_eq!(
            authenticate(&h, "x-trifft-secret", &s),
            Err(AuthFailure::Missing)
        );
    }

    #[test]
    fn an_empty_previous_secret_accepts_nothing() {
        let s = RotatingSecret {
            current: SecretString::new("a"),
            previous: Some(SecretString::new("")),
        };
        assert_eq!(
            authenticate(&headers(&[("x-trifft-secret", "")]), "x-trifft-secret", &s),
            Err(AuthFailure::Wrong)
        );
    }
}
