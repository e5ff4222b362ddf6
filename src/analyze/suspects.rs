//! Suspects, as Honeycomb's BubbleUp finds them: the origin's failing calls (or its slowest,
//! when it only got slow) are compared with its successful calls in the same minutes, and with
//! its calls before the incident when too few succeeded then. A value is ranked by how much more
//! of the failing calls it covers than of the healthy ones: a version on every failing call and
//! few healthy ones (difference 0.9) stands above each of its pods (0.45), and values that
//! always occur together (a pod and its host) are one suspect. Numeric attributes with many
//! values are compared as distributions: the threshold that best separates failing from healthy
//! calls (`payment.gateway.pool.active ≥ 50`).

use std::collections::{BTreeMap, BTreeSet};

use foldhash::HashMap;
use std::sync::Arc;

use super::tree::TraceTree;
use super::{AnalysisInput, Evidence, Origin, Suspect, round4, time};
use crate::capture::spill_record::SpanRecord;
use crate::model::{AttrValue, Attribute, Span, SpanId, TraceId};

/// Failing calls a value must cover, at least, to be a suspect.
const MIN_SUPPORT: f64 = 0.2;
const MIN_FAILING: usize = 3;
/// Healthy calls in the failing minutes needed to compare with them rather than the baseline.
const MIN_HEALTHY: usize = 5;
/// How much more of the failing calls than of the healthy ones a value must cover.
const MIN_DIFFERENCE: f64 = 0.1;
/// A numeric key with more distinct values than this is compared as a distribution.
const NUMERIC_DISTINCT: usize = 10;
const MAX_SUSPECTS: usize = 20;

/// Keys that describe the failure itself rather than what sets the failing calls apart.
fn is_outcome(key: &str) -> bool {
    matches!(
        key,
        "service.name"
            | "error"
            | "error.type"
            | "error.message"
            | "otel.status_code"
            | "otel.status_description"
            | "http.status_code"
            | "http.response.status_code"
            | "rpc.grpc.status_code"
            | "status.code"
            | "status.message"
    ) || key.starts_with("exception.")
}

/// The key shown first among values that always occur together: the one a person acts on.
fn key_rank(key: &str) -> usize {
    const ORDER: &[&str] = &[
        "service.version",
        "deployment.version",
        "k8s.deployment.name",
        "k8s.pod.name",
        "container.id",
        "k8s.node.name",
        "host.name",
    ];
    ORDER.iter().position(|k| *k == key).unwrap_or(ORDER.len())
}

/// The attributes of light spans (`Span::slim`), read back from where the capture streamed
/// the whole traces, keyed by what tells two spans apart.
pub struct SpanAttributes {
    by_span: HashMap<SpanKey, Vec<Attribute>>,
}

/// Trace, span id, start, end and service: what tells two spans apart.
type SpanKey = (TraceId, SpanId, i64, i64, Arc<str>);

impl SpanAttributes {
    /// The attributes of the spans read back (a span read twice keeps its first copy).
    pub fn new(spans: Vec<(TraceId, SpanRecord)>) -> Self {
        let mut by_span = HashMap::with_capacity_and_hasher(spans.len(), Default::default());
        for (t, s) in spans {
            by_span
                .entry((t, s.span_id, s.start_ns, s.end_ns, s.service))
                .or_insert(s.attributes);
        }
        Self { by_span }
    }

    fn of(&self, s: &Span) -> &[Attribute] {
        let key = (
            s.trace_id,
            s.span_id,
            s.start_ns,
            s.end_ns,
            s.service().clone(),
        );
        self.by_span.get(&key).map_or(&[], Vec::as_slice)
    }
}

fn attributes<'a>(
    s: &'a Span,
    read_back: Option<&'a SpanAttributes>,
) -> impl Iterator<Item = &'a Attribute> {
    let own = match read_back {
        Some(r) => r.of(s),
        None => &s.attributes,
    };
    own.iter()
        .chain(s.resource.attributes.iter())
        .filter(|a| !is_outcome(&a.key))
}

/// Whether a span is one of the calls the suspects of `origin` compare.
pub fn is_compared(s: &Span, origin: &Origin) -> bool {
    **s.service() == *origin.service && *s.operation == *origin.operation
}

fn number(v: &AttrValue) -> Option<f64> {
    match v {
        AttrValue::Int(i) => Some(*i as f64),
        AttrValue::Double(d) if d.is_finite() => Some(*d),
        _ => None,
    }
}

/// The calls compared: failing, healthy in the same minutes, before the incident.
struct Groups<'a> {
    failing: Vec<&'a Span>,
    healthy: Vec<&'a Span>,
    baseline: Vec<&'a Span>,
}

impl<'a> Groups<'a> {
    fn of(forest: &'a [TraceTree<'a>], origin: &Origin, input: &AnalysisInput) -> Self {
        let calls: Vec<&Span> = forest
            .iter()
            .flat_map(|t| t.trace.spans.iter())
            .filter(|s| is_compared(s, origin))
            .collect();
        // Traces arrive merged by id (`capture::run`), so each call is here once.
        let (incident, before): (Vec<&Span>, Vec<&Span>) = calls
            .into_iter()
            .partition(|s| s.start_ns >= input.began_ns);
        let any_errors = incident.iter().any(|s| s.is_error());
        // Latency only: the slowest tenth of the incident's calls.
        let cut = {
            let mut d: Vec<i64> = incident.iter().map(|s| s.duration_ns()).collect();
            d.sort_unstable();
            d.get(d.len() * 9 / 10).copied().unwrap_or(i64::MAX)
        };
        let marks: Vec<bool> = incident
            .iter()
            .map(|s| {
                if any_errors {
                    s.is_error()
                } else {
                    s.duration_ns() >= cut
                }
            })
            .collect();
        let minute = |s: &Span| s.start_ns.div_euclid(60_000_000_000);
        let minutes: BTreeSet<i64> = incident
            .iter()
            .zip(&marks)
            .filter(|(_, f)| **f)
            .map(|(s, _)| minute(s))
            .collect();
        let mut failing = Vec::new();
        let mut healthy = Vec::new();
        for (s, f) in incident.into_iter().zip(marks) {
            if f {
                failing.push(s);
            } else if !s.is_error() && minutes.contains(&minute(s)) {
                healthy.push(s);
            }
        }
        let baseline = before.into_iter().filter(|s| !s.is_error()).collect();
        Self {
            failing,
            healthy,
            baseline,
        }
    }
}

/// Shares of each group a condition covers.
struct Cover {
    failing: f64,
    healthy: Option<f64>,
    baseline: Option<f64>,
}

fn share(n: usize, of: usize) -> Option<f64> {
    (of > 0).then(|| n as f64 / of as f64)
}

/// The suspects for `origin`, best first. Light spans' attributes come from `read_back`.
pub fn suspects(
    forest: &[TraceTree<'_>],
    origin: &Origin,
    input: &AnalysisInput,
    read_back: Option<&SpanAttributes>,
) -> Vec<Suspect> {
    let g = Groups::of(forest, origin, input);
    let compare_healthy = g.healthy.len() >= MIN_HEALTHY;
    if g.failing.len() < MIN_FAILING || (!compare_healthy && g.baseline.is_empty()) {
        return Vec::new();
    }
    // The share a suspect is judged against, and how many calls it rests on.
    let against = |c: &Cover| -> Option<f64> {
        if compare_healthy {
            c.healthy
        } else {
            c.baseline
        }
    };
    let against_n = if compare_healthy {
        g.healthy.len()
    } else {
        g.baseline.len()
    };
    let all: Vec<&Span> = g
        .failing
        .iter()
        .chain(&g.healthy)
        .chain(&g.baseline)
        .copied()
        .collect();
    let (nf, nh) = (g.failing.len(), g.healthy.len());
    let group_of = |i: usize| -> usize {
        if i < nf {
            0
        } else if i < nf + nh {
            1
        } else {
            2
        }
    };
    let cover = |counts: [usize; 3]| Cover {
        failing: counts[0] as f64 / nf as f64,
        healthy: share(counts[1], nh),
        baseline: share(counts[2], g.baseline.len()),
    };

    // Where each value occurs (indices into `all`), and each key's numbers.
    let mut occurs: HashMap<(&str, String), Vec<u32>> = HashMap::default();
    let mut numbers: HashMap<&str, Vec<(usize, f64)>> = HashMap::default();
    let mut not_numeric: BTreeSet<&str> = BTreeSet::new();
    for (i, s) in all.iter().enumerate() {
        let mut seen: BTreeSet<(&str, String)> = BTreeSet::new();
        for a in attributes(s, read_back) {
            match number(&a.value) {
                Some(x) => numbers.entry(&a.key).or_default().push((i, x)),
                None => {
                    not_numeric.insert(&a.key);
                }
            }
            seen.insert((&a.key, a.value.to_text()));
        }
        for v in seen {
            occurs.entry(v).or_default().push(i as u32);
        }
    }
    let distribution_keys: BTreeSet<&str> = numbers
        .iter()
        .filter(|(k, xs)| {
            !not_numeric.contains(*k) && {
                let distinct: BTreeSet<u64> = xs.iter().map(|(_, x)| x.to_bits()).collect();
                distinct.len() > NUMERIC_DISTINCT
            }
        })
        .map(|(k, _)| *k)
        .collect();

    let keep = |c: &Cover| -> Option<(f64, f64)> {
        let other = against(c).unwrap_or(0.0);
        let difference = c.failing - other;
        let lift = c.failing / other.max(1.0 / (against_n as f64 + 1.0));
        (c.failing >= MIN_SUPPORT && difference >= MIN_DIFFERENCE && lift >= 1.5)
            .then_some((difference, lift))
    };
    // The first failing call among `at` (indices into `all`; failing calls come first).
    let example = |at: &mut dyn Iterator<Item = usize>| -> Option<Evidence> {
        at.filter(|&i| i < nf)
            .map(|i| all[i])
            .min_by_key(|s| (s.end_ns, s.trace_id, s.span_id))
            .map(|s| Evidence {
                time: time(s.end_ns),
                trace_id: s.trace_id,
                span_id: s.span_id,
            })
    };
    let suspect = |key: &str,
                   value: String,
                   c: &Cover,
                   lift: f64,
                   also: Vec<String>,
                   example: Option<Evidence>| Suspect {
        key: key.to_owned(),
        value,
        failing_share: round4(c.failing),
        healthy_share: c.healthy.map(round4),
        baseline_share: c.baseline.map(round4),
        lift: round4(lift),
        also,
        failing_calls: nf,
        healthy_calls: nh,
        baseline_calls: g.baseline.len(),
        example,
    };
    let mut ranked: Vec<(f64, Suspect)> = Vec::new();

    // Values that always occur together (the same calls, so the same shares) are one suspect.
    // Per set of calls: its shares, difference and lift, and the values on exactly those calls.
    type Group<'k> = (Cover, f64, f64, Vec<(&'k str, String)>);
    let mut together: BTreeMap<Vec<u32>, Group<'_>> = BTreeMap::new();
    for ((key, value), at) in occurs {
        if distribution_keys.contains(key) {
            continue;
        }
        if let Some(group) = together.get_mut(&at) {
            group.3.push((key, value));
            continue;
        }
        let mut counts = [0usize; 3];
        for &i in &at {
            counts[group_of(i as usize)] += 1;
        }
        let c = cover(counts);
        if let Some((difference, lift)) = keep(&c) {
            together.insert(at, (c, difference, lift, vec![(key, value)]));
        }
    }
    for (at, (c, difference, lift, mut values)) in together {
        values.sort_by(|a, b| (key_rank(a.0), a.0, &a.1).cmp(&(key_rank(b.0), b.0, &b.1)));
        let (key, value) = values.remove(0);
        let also = values
            .into_iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let first = example(&mut at.iter().map(|&i| i as usize));
        ranked.push((difference, suspect(key, value, &c, lift, also, first)));
    }

    // Numeric keys: the threshold that best separates the failing calls.
    for key in distribution_keys {
        let mut xs: Vec<(f64, usize)> = numbers[key]
            .iter()
            .map(|(i, x)| (*x, group_of(*i)))
            .collect();
        xs.sort_by(|a, b| a.0.total_cmp(&b.0));
        // below[j]: calls of each group among the j smallest values.
        let mut below = vec![[0usize; 3]];
        for (_, grp) in &xs {
            let mut next = below[below.len() - 1];
            next[*grp] += 1;
            below.push(next);
        }
        let total = below[xs.len()];
        let mut best: Option<(f64, f64, String, Cover, char, f64)> = None;
        let mut j = 0;
        while j < xs.len() {
            let t = xs[j].0;
            let mut end = j;
            while end < xs.len() && xs[end].0 == t {
                end += 1;
            }
            let at_least = [0, 1, 2].map(|g| total[g] - below[j][g]);
            for (sign, counts) in [('≥', at_least), ('≤', below[end])] {
                let c = cover(counts);
                if let Some((difference, lift)) = keep(&c)
                    && best.as_ref().is_none_or(|b| difference > b.0)
                {
                    best = Some((difference, lift, format!("{sign} {t}"), c, sign, t));
                }
            }
            j = end;
        }
        if let Some((difference, lift, value, c, sign, t)) = best {
            let first = example(&mut numbers[key].iter().filter_map(|&(i, x)| {
                let on = if sign == '≥' { x >= t } else { x <= t };
                on.then_some(i)
            }));
            ranked.push((difference, suspect(key, value, &c, lift, Vec::new(), first)));
        }
    }

    ranked.sort_by(|(da, a), (db, b)| {
        db.total_cmp(da)
            .then(b.failing_share.total_cmp(&a.failing_share))
            .then(b.lift.total_cmp(&a.lift))
            .then(key_rank(&a.key).cmp(&key_rank(&b.key)))
            .then(a.key.cmp(&b.key))
            .then(a.value.cmp(&b.value))
    });
    ranked
        .into_iter()
        .map(|(_, s)| s)
        .take(MAX_SUSPECTS)
        .collect()
}
