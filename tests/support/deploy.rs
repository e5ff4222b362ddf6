//! What `deploy/` asks of the program: the metrics its alerting rules and dashboard use.

use std::collections::BTreeSet;
use std::path::Path;

fn deploy() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy"))
}

/// Every `evidence_locker_…` series name the PrometheusRule and the Grafana dashboard use.
pub fn referenced_metrics() -> BTreeSet<String> {
    let mut text = std::fs::read_to_string(deploy().join("kubernetes/prometheus-rule.yaml"))
        .expect("deploy/kubernetes/prometheus-rule.yaml");
    for entry in std::fs::read_dir(deploy().join("grafana")).unwrap() {
        text.push_str(&std::fs::read_to_string(entry.unwrap().path()).unwrap());
    }
    let re = regex::Regex::new(r"evidence_locker_[a-z_]+").unwrap();
    let names: BTreeSet<String> = re.find_iter(&text).map(|m| m.as_str().to_owned()).collect();
    assert!(
        names.len() >= 15,
        "too few metrics found in deploy/: {names:?}"
    );
    names
}

/// The series names a `/metrics` page holds samples of.
pub fn exported(page: &str) -> BTreeSet<String> {
    page.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect()
}

/// Asserts that `page` (a worker's or an intake's /metrics) has every series deploy/ uses that
/// `belongs` says is its own, except those `absent_ok` names (series that exist only at times).
pub fn assert_deploy_metrics_exported(
    page: &str,
    belongs: impl Fn(&str) -> bool,
    absent_ok: &[&str],
) {
    let have = exported(page);
    let missing: Vec<String> = referenced_metrics()
        .into_iter()
        .filter(|n| belongs(n) && !have.contains(n) && !absent_ok.contains(&n.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "deploy/ uses metrics that are not exported: {missing:?}\n{page}"
    );
}
