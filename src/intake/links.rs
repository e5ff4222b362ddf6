//! Stable report links: `GET /v1/bundles/<incident>/<capture>/report` on the intake, signed by
//! the worker with `intake.link_secret` (HMAC-SHA256 over the incident, the capture and the
//! expiry), or opened with the intake's own credentials. Each visit presigns the report afresh,
//! so the link outlives the credentials a presigned URL dies with (an IRSA session: an hour).

use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::config::IntakeSettings;

fn mac(secret: &str, incident: &str, capture: &str, expires: i64) -> Hmac<Sha256> {
    // Any key length is accepted by HMAC.
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    m.update(
        format!("evidence-locker report link v1\n{incident}\n{capture}\n{expires}").as_bytes(),
    );
    m
}

/// The stable link to a capture's report and when it stops being honoured, when
/// `intake.public_url` and `intake.link_secret` are set.
pub fn stable_link(
    s: &IntakeSettings,
    incident: &str,
    capture: &str,
    now: DateTime<Utc>,
) -> Option<(String, DateTime<Utc>)> {
    if s.public_url.is_empty() || s.link_secret.is_empty() {
        return None;
    }
    let expires = now + chrono::Duration::from_std(s.link_ttl).ok()?;
    let signature = hex::encode(
        mac(&s.link_secret, incident, capture, expires.timestamp())
            .finalize()
            .into_bytes(),
    );
    let mut url = url::Url::parse(s.public_url.trim_end_matches('/')).ok()?;
    url.path_segments_mut()
        .ok()?
        .pop_if_empty()
        .extend(["v1", "bundles", incident, capture, "report"]);
    url.query_pairs_mut()
        .append_pair("expires", &expires.timestamp().to_string())
        .append_pair("signature", &signature);
    Some((url.to_string(), expires))
}

/// Why a signed link is refused, if it is.
pub fn check_signature(
    secret: &str,
    incident: &str,
    capture: &str,
    expires: i64,
    signature: &str,
    now: DateTime<Utc>,
) -> Result<(), &'static str> {
    if secret.is_empty() {
        return Err("signed links are not enabled (intake.link_secret)");
    }
    let Ok(given) = hex::decode(signature) else {
        return Err("the link's signature is not valid");
    };
    // verify_slice compares in constant time.
    mac(secret, incident, capture, expires)
        .verify_slice(&given)
        .map_err(|_| "the link's signature is not valid")?;
    if now.timestamp() > expires {
        return Err("the link has expired (intake.link_ttl)");
    }
    Ok(())
}

/// A capture id as the worker and `collect` make them: letters, digits, `-`, `_`, `.`; never
/// `..` (the id is a directory of the store).
pub fn valid_capture(capture: &str) -> bool {
    !capture.is_empty()
        && capture.len() <= 128
        && capture != "."
        && !capture.contains("..")
        && capture
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> IntakeSettings {
        let mut s = crate::config::Settings::load(None).unwrap().intake;
        s.public_url = "https://evidence.example.com/".into();
        s.link_secret = "0123456789abcdef0123456789abcdef".into();
        s
    }

    #[test]
    fn a_signed_link_opens_until_it_expires_and_not_for_another_capture() {
        let s = settings();
        let now = Utc::now();
        let (link, expires) = stable_link(&s, "INC-1", "20260205T144000Z-declared", now).unwrap();
        assert!(
            link.starts_with(
                "https://evidence.example.com/v1/bundles/INC-1/20260205T144000Z-declared/report?expires="
            ),
            "{link}"
        );
        let url = url::Url::parse(&link).unwrap();
        let q: std::collections::BTreeMap<_, _> = url.query_pairs().into_owned().collect();
        let sig = &q["signature"];
        let exp: i64 = q["expires"].parse().unwrap();
        assert_eq!(exp, expires.timestamp());
        let secret = &s.link_secret;
        assert_eq!(
            check_signature(secret, "INC-1", "20260205T144000Z-declared", exp, sig, now),
            Ok(())
        );
        assert!(
            check_signature(secret, "INC-2", "20260205T144000Z-declared", exp, sig, now).is_err()
        );
        assert!(
            check_signature(
                secret,
                "INC-1",
                "20260205T144000Z-declared",
                exp + 1,
                sig,
                now
            )
            .is_err()
        );
        let later = expires + chrono::Duration::seconds(1);
        assert_eq!(
            check_signature(
                secret,
                "INC-1",
                "20260205T144000Z-declared",
                exp,
                sig,
                later
            ),
            Err("the link has expired (intake.link_ttl)")
        );
        assert!(
            check_signature(
                "another-secret-0123456789",
                "INC-1",
                "20260205T144000Z-declared",
                exp,
                sig,
                now
            )
            .is_err()
        );
    }

    #[test]
    fn capture_ids_cannot_leave_the_incident_s_directory() {
        assert!(valid_capture("20260205T144000Z-declared"));
        for bad in ["", ".", "..", "../x", "a/b", "a\\b", "x..y"] {
            assert!(!valid_capture(bad), "{bad}");
        }
    }
}
