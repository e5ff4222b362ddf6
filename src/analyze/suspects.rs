//! Suspects, as Honeycomb's BubbleUp finds them: for the spans that show the origin (its
//! failing spans, or its slowest calls when it only got slow), every span and resource
//! attribute value is compared with the same service and operation's spans before the incident;
//! values much more common on the failing spans come first (`deployment.version = v2.3.1` on
//! 100% of failing spans against 40% of normal ones).

use std::collections::{BTreeMap, HashMap, HashSet};

use super::tree::TraceTree;
use super::{AnalysisInput, Origin, Suspect, round4};
use crate::model::Span;

/// Failing spans a value must appear on, at least, to be a suspect.
const MIN_SUPPORT: f64 = 0.2;
const MIN_FAILING: usize = 3;

fn values(s: &Span) -> HashSet<(String, String)> {
    s.attributes
        .iter()
        .chain(s.resource.attributes.iter())
        .filter(|a| &*a.key != "service.name")
        .map(|a| (a.key.to_string(), a.value.to_text()))
        .collect()
}

/// The suspects for `origin`, best first.
pub fn suspects(forest: &[TraceTree<'_>], origin: &Origin, input: &AnalysisInput) -> Vec<Suspect> {
    let of_origin = || {
        forest
            .iter()
            .flat_map(|t| t.trace.spans.iter())
            .filter(|s| **s.service() == *origin.service && *s.operation == *origin.operation)
    };
    let incident: Vec<&Span> = of_origin()
        .filter(|s| s.start_ns >= input.began_ns)
        .collect();
    let any_errors = incident.iter().any(|s| s.is_error());
    let failing: Vec<&Span> = if any_errors {
        incident.iter().copied().filter(|s| s.is_error()).collect()
    } else {
        // Latency only: the slowest tenth of the incident's calls.
        let mut d: Vec<i64> = incident.iter().map(|s| s.duration_ns()).collect();
        d.sort_unstable();
        let cut = d.get(d.len() * 9 / 10).copied().unwrap_or(i64::MAX);
        incident
            .iter()
            .copied()
            .filter(|s| s.duration_ns() >= cut)
            .collect()
    };
    let mut normal: Vec<&Span> = of_origin()
        .filter(|s| s.start_ns < input.began_ns && !s.is_error())
        .collect();
    if normal.is_empty() {
        // No baseline for this operation: the incident's own successful calls are the normal.
        normal = incident.iter().copied().filter(|s| !s.is_error()).collect();
    }
    if failing.len() < MIN_FAILING || normal.is_empty() {
        return Vec::new();
    }
    let count = |spans: &[&Span]| {
        let mut c: HashMap<(String, String), usize> = HashMap::new();
        for s in spans {
            for v in values(s) {
                *c.entry(v).or_default() += 1;
            }
        }
        c
    };
    let fail_counts = count(&failing);
    let normal_counts = count(&normal);
    let mut out: BTreeMap<(String, String), Suspect> = BTreeMap::new();
    for ((key, value), n) in fail_counts {
        let failing_share = n as f64 / failing.len() as f64;
        if failing_share < MIN_SUPPORT {
            continue;
        }
        let baseline_share = normal_counts
            .get(&(key.clone(), value.clone()))
            .copied()
            .unwrap_or(0) as f64
            / normal.len() as f64;
        // A value on every span, failing or not, says nothing.
        let lift = failing_share / baseline_share.max(1.0 / (normal.len() as f64 + 1.0));
        if lift < 1.5 {
            continue;
        }
        out.insert(
            (key.clone(), value.clone()),
            Suspect {
                key,
                value,
                failing_share: round4(failing_share),
                baseline_share: round4(baseline_share),
                lift: round4(lift),
            },
        );
    }
    let mut v: Vec<Suspect> = out.into_values().collect();
    v.sort_by(|a, b| {
        b.lift
            .total_cmp(&a.lift)
            .then(b.failing_share.total_cmp(&a.failing_share))
            .then(a.key.cmp(&b.key))
            .then(a.value.cmp(&b.value))
    });
    v.truncate(20);
    v
}
