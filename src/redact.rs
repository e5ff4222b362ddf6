//! Redaction, applied to the captured traces before anything is written (spool, bundle, every
//! derived file): attributes whose key names a secret lose their value, and secrets found in
//! any text (string values, status messages, event names, operation names) are replaced, the
//! rest of the text kept. The manifest counts what each rule redacted, never a value.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use regex::Regex;
use serde::Serialize;

use crate::capture::Purposes;
use crate::model::{AttrValue, Attribute, Resource, Scope, Trace};

/// What replaces an attribute value whose key names a secret.
pub const REDACTED: &str = "[REDACTED]";

/// Key fragments that name a secret, matched in the key lower-cased with `-`, `_`, `.` and
/// spaces removed (`X-Api-Key`, `api_key` and `http.request.header.authorization` all match).
const SECRET_KEYS: &[&str] = &[
    "authorization",
    "cookie",
    "password",
    "passwd",
    "secret",
    "token",
    "apikey",
    "session",
    "creditcard",
    "privatekey",
];

/// The built-in value rules: name, pattern.
const VALUE_RULES: &[(&str, &str)] = &[
    (
        "private_key",
        r"-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?-----END [A-Z ]*PRIVATE KEY-----",
    ),
    (
        "jwt",
        r"\beyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*",
    ),
    ("bearer_token", r"(?i)\bbearer\s+[A-Za-z0-9\-._~+/]{8,}=*"),
    (
        "aws_access_key",
        r"\b(?:AKIA|ASIA|ABIA|ACCA|AGPA|AIDA|AIPA|ANPA|ANVA|AROA|APKA)[A-Z0-9]{16}\b",
    ),
    (
        "email",
        r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)*\.[A-Za-z]{2,}",
    ),
    // Checked with Luhn before it counts.
    ("card_number", r"\b\d(?:[ \-]?\d){12,18}\b"),
];

/// The `[redaction]` settings.
#[derive(Clone, Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedactionSettings {
    pub enabled: bool,
    /// Extra attribute-key patterns (regular expressions, case-insensitive).
    pub keys: Vec<String>,
    /// Extra value patterns (regular expressions).
    pub values: Vec<String>,
}

/// What the manifest records: whether redaction ran, and how many values each rule redacted.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct RedactionReport {
    pub enabled: bool,
    /// Rule name → values redacted (`key` for attributes redacted by their key).
    pub rules: BTreeMap<String, usize>,
}

pub struct Redactor {
    enabled: bool,
    keys: Vec<Regex>,
    values: Vec<(String, Regex)>,
    /// All of `values` at once: most texts match none, and one pass over them tells.
    any_value: Option<regex::RegexSet>,
}

/// Whether each attribute key seen names a secret, by the key's address: keys are shared by
/// the spans of one part of the input, so each is judged once.
type KeyVerdicts = HashMap<usize, bool>;

impl Redactor {
    /// Builds the rules; a pattern that is not a regular expression is an error naming it.
    pub fn new(settings: &RedactionSettings) -> Result<Self, String> {
        let keys = settings
            .keys
            .iter()
            .enumerate()
            .map(|(i, k)| {
                Regex::new(&format!("(?i){k}"))
                    .map_err(|e| format!("redaction.keys[{i}] is not a regular expression: {e}"))
            })
            .collect::<Result<_, _>>()?;
        let mut values: Vec<(String, Regex)> = VALUE_RULES
            .iter()
            .map(|(name, p)| {
                (
                    (*name).to_owned(),
                    Regex::new(p).unwrap_or_else(|e| unreachable!("built-in rule {name}: {e}")),
                )
            })
            .collect();
        for (i, v) in settings.values.iter().enumerate() {
            let re = Regex::new(v)
                .map_err(|e| format!("redaction.values[{i}] is not a regular expression: {e}"))?;
            values.push((format!("values[{i}]"), re));
        }
        // A set too large to build only loses the shortcut.
        let any_value = regex::RegexSet::new(values.iter().map(|(_, r)| r.as_str())).ok();
        Ok(Self {
            enabled: settings.enabled,
            keys,
            values,
            any_value,
        })
    }

    fn secret_key(&self, key: &str) -> bool {
        let squashed: String = key
            .chars()
            .filter(|c| !matches!(c, '-' | '_' | '.' | ' '))
            .flat_map(char::to_lowercase)
            .collect();
        SECRET_KEYS.iter().any(|k| squashed.contains(k))
            || self.keys.iter().any(|r| r.is_match(key))
    }

    /// The text with every secret replaced by `[REDACTED:<rule>]`, counted; `None` when nothing
    /// matched.
    fn text(&self, s: &str, counts: &mut BTreeMap<String, usize>) -> Option<String> {
        if self.any_value.as_ref().is_some_and(|set| !set.is_match(s)) {
            return None;
        }
        let mut out: Option<String> = None;
        for (name, re) in &self.values {
            let current = out.as_deref().unwrap_or(s);
            let mut hits = 0;
            let replaced = re.replace_all(current, |c: &regex::Captures<'_>| {
                let m = &c[0];
                if name == "card_number" && !luhn(m) {
                    return m.to_owned();
                }
                hits += 1;
                format!("[REDACTED:{name}]")
            });
            if hits > 0 {
                *counts.entry(name.clone()).or_default() += hits;
                out = Some(replaced.into_owned());
            }
        }
        out
    }

    fn value(&self, v: &mut AttrValue, counts: &mut BTreeMap<String, usize>, kv: &mut KeyVerdicts) {
        match v {
            AttrValue::Str(s) => {
                if let Some(t) = self.text(s, counts) {
                    *s = t.into();
                }
            }
            AttrValue::Array(items) => items.iter_mut().for_each(|i| self.value(i, counts, kv)),
            AttrValue::Map(attrs) => self.attributes(attrs, counts, kv),
            AttrValue::Bool(_) | AttrValue::Int(_) | AttrValue::Double(_) | AttrValue::Bytes(_) => {
            }
        }
    }

    fn attributes(
        &self,
        attrs: &mut [Attribute],
        counts: &mut BTreeMap<String, usize>,
        kv: &mut KeyVerdicts,
    ) {
        for a in attrs {
            let secret = *kv
                .entry(Arc::as_ptr(&a.key).cast::<u8>() as usize)
                .or_insert_with(|| self.secret_key(&a.key));
            if secret {
                if !matches!(&a.value, AttrValue::Str(s) if &**s == REDACTED) {
                    a.value = AttrValue::Str(REDACTED.into());
                    *counts.entry("key".into()).or_default() += 1;
                }
            } else {
                self.value(&mut a.value, counts, kv);
            }
        }
    }

    /// Whether redaction is on.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Redacts every trace in place. Resources, scopes and operation names shared by many spans
    /// are redacted once and stay shared.
    pub fn apply(&self, traces: &mut [(Trace, Purposes)]) -> RedactionReport {
        let mut total = BTreeMap::new();
        for counts in self.apply_counted(traces.iter_mut().map(|(t, _)| t)) {
            for (rule, n) in counts {
                *total.entry(rule).or_default() += n;
            }
        }
        RedactionReport {
            enabled: self.enabled,
            rules: total,
        }
    }

    /// Redacts each of `traces` in place, counting per trace what was redacted (a resource,
    /// scope or operation name shared by several traces is redacted once and counted with the
    /// first), so that a capture that keeps only some of them counts only theirs.
    pub fn apply_counted<'a>(
        &self,
        traces: impl Iterator<Item = &'a mut Trace>,
    ) -> Vec<BTreeMap<String, usize>> {
        let mut per_trace = Vec::new();
        if !self.enabled {
            return per_trace;
        }
        let mut resources: HashMap<*const Resource, Arc<Resource>> = HashMap::new();
        let mut scopes: HashMap<*const Scope, Arc<Scope>> = HashMap::new();
        let mut names: HashMap<Arc<str>, Arc<str>> = HashMap::new();
        let mut kv = KeyVerdicts::new();
        for trace in traces {
            let mut counts = BTreeMap::new();
            for span in &mut trace.spans {
                let r = resources
                    .entry(Arc::as_ptr(&span.resource))
                    .or_insert_with(|| {
                        let mut r = (*span.resource).clone();
                        self.attributes(&mut r.attributes, &mut counts, &mut kv);
                        if let Some(t) = self.text(&r.service, &mut counts) {
                            r.service = t.into();
                        }
                        Arc::new(r)
                    });
                span.resource = r.clone();
                if let Some(scope) = &span.scope {
                    let s = scopes.entry(Arc::as_ptr(scope)).or_insert_with(|| {
                        let mut s = (**scope).clone();
                        self.attributes(&mut s.attributes, &mut counts, &mut kv);
                        Arc::new(s)
                    });
                    span.scope = Some(s.clone());
                }
                let op = names.entry(span.operation.clone()).or_insert_with(|| {
                    match self.text(&span.operation, &mut counts) {
                        Some(t) => t.into(),
                        None => span.operation.clone(),
                    }
                });
                span.operation = op.clone();
                self.attributes(&mut span.attributes, &mut counts, &mut kv);
                if let Some(m) = &span.status.message
                    && let Some(t) = self.text(m, &mut counts)
                {
                    span.status.message = Some(t.into());
                }
                for e in &mut span.events {
                    if let Some(t) = self.text(&e.name, &mut counts) {
                        e.name = t.into();
                    }
                    self.attributes(&mut e.attributes, &mut counts, &mut kv);
                }
                for l in &mut span.links {
                    self.attributes(&mut l.attributes, &mut counts, &mut kv);
                }
            }
            per_trace.push(counts);
        }
        per_trace
    }
}

/// Redacts a capture's traces as the settings say, and records what was done in it. Traces
/// streamed through a spill were redacted as they were read: their report is taken as it is.
pub fn redact_capture(
    settings: &RedactionSettings,
    capture: &mut crate::capture::Capture,
) -> Result<(), RedactionError> {
    if let Some(spill) = &capture.spill {
        capture.redaction = spill.redaction();
        return Ok(());
    }
    let r = Redactor::new(settings).map_err(RedactionError)?;
    capture.redaction = r.apply(&mut capture.traces);
    Ok(())
}

/// Redaction rules that cannot be built (the configuration is checked at start-up, so only a
/// caller that skipped that check sees this).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct RedactionError(pub String);

/// Whether the digits of `s` pass the Luhn check.
fn luhn(s: &str) -> bool {
    let digits: Vec<u32> = s.chars().filter_map(|c| c.to_digit(10)).collect();
    if !(13..=19).contains(&digits.len()) {
        return false;
    }
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| {
            if i % 2 == 1 {
                let x = d * 2;
                if x > 9 { x - 9 } else { x }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn on() -> Redactor {
        Redactor::new(&RedactionSettings {
            enabled: true,
            keys: vec!["^x-internal-".into()],
            values: vec![r"ACME-\d{6}".into()],
        })
        .unwrap()
    }

    #[test]
    fn secrets_in_text_are_replaced_and_the_rest_is_kept() {
        let r = on();
        let mut c = BTreeMap::new();
        let t = r
            .text(
                "user jane.doe@example.com paid with 4111 1111 1111 1111 (order 1234567890123), key AKIAIOSFODNN7EXAMPLE, ticket ACME-123456",
                &mut c,
            )
            .unwrap();
        assert_eq!(
            t,
            "user [REDACTED:email] paid with [REDACTED:card_number] (order 1234567890123), key [REDACTED:aws_access_key], ticket [REDACTED:values[0]]"
        );
        assert_eq!(c["email"], 1);
        assert_eq!(c["card_number"], 1);
        assert_eq!(c["aws_access_key"], 1);
        assert_eq!(c["values[0]"], 1);
        let t = r
            .text(
                "Authorization: Bearer abcdefghijklmnop.qrs and eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
                &mut c,
            )
            .unwrap();
        assert!(
            !t.contains("abcdefghijklmnop") && !t.contains("eyJhbGci"),
            "{t}"
        );
        assert!(r.text("nothing to see, 42 ms", &mut c).is_none());
    }

    #[test]
    fn keys_that_name_secrets_lose_their_value_whatever_the_spelling() {
        let r = on();
        for k in [
            "http.request.header.authorization",
            "Set-Cookie",
            "db.password",
            "X-Api-Key",
            "session_id",
            "x-internal-trace",
            "user.credit_card",
        ] {
            assert!(r.secret_key(k), "{k}");
        }
        for k in ["http.method", "k8s.pod.name", "deployment.version"] {
            assert!(!r.secret_key(k), "{k}");
        }
    }

    #[test]
    fn a_bad_pattern_is_refused_with_its_place() {
        let e = Redactor::new(&RedactionSettings {
            enabled: true,
            keys: vec![],
            values: vec!["(".into()],
        })
        .err()
        .unwrap();
        assert!(e.starts_with("redaction.values[0]"), "{e}");
    }
}
