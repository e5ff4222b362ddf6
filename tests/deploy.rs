//! `deploy/` against the program: every manifest parses and has the kinds it should, and every
//! image, port, probe path, command, mount and configuration key it names is one the program
//! has. The ConfigMap's configuration passes `config check`.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use support::*;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Every YAML document of `files`, read by PyYAML (in .venv, installed by scripts/test).
fn yaml_documents(files: &[PathBuf]) -> Vec<(PathBuf, Value)> {
    let python = root().join(".venv/bin/python");
    let out = Command::new(&python)
        .args([
            "-c",
            "import json, sys, yaml\nprint(json.dumps([[f, d] for f in sys.argv[1:] for d in yaml.safe_load_all(open(f, encoding='utf-8')) if d is not None]))",
        ])
        .args(files)
        .output()
        .unwrap_or_else(|e| panic!("{}: {e} (run scripts/test once)", python.display()));
    assert!(
        out.status.success(),
        "a YAML file does not parse: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let docs: Vec<(String, Value)> = serde_json::from_slice(&out.stdout).unwrap();
    docs.into_iter()
        .map(|(f, d)| (PathBuf::from(f), d))
        .collect()
}

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    files
}

/// The Kubernetes objects of deploy/kubernetes, by kind.
fn kubernetes() -> BTreeMap<String, Vec<Value>> {
    let mut by_kind: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for (file, doc) in yaml_documents(&yaml_files(&root().join("deploy/kubernetes"))) {
        let kind = doc["kind"]
            .as_str()
            .unwrap_or_else(|| panic!("{} has a document without a kind", file.display()))
            .to_owned();
        by_kind.entry(kind).or_default().push(doc);
    }
    by_kind
}

/// The ConfigMap's config.toml.
fn configmap_toml(k: &BTreeMap<String, Vec<Value>>) -> String {
    k["ConfigMap"]
        .iter()
        .find(|c| c["metadata"]["name"] == "evidence-locker-config")
        .expect("the evidence-locker-config ConfigMap")["data"]["config.toml"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// The ConfigMap's configuration with its /secrets/ files made under `dir` (where the pods have
/// the Secret mounted), written to `dir/config.toml`.
fn configmap_here(toml: &str, dir: &Path) -> PathBuf {
    let secrets = dir.join("secrets");
    std::fs::create_dir_all(&secrets).unwrap();
    let key = evidence_locker_test_key();
    for line in toml.lines() {
        if let Some(path) = line
            .split('"')
            .nth(1)
            .and_then(|v| v.strip_prefix("/secrets/"))
        {
            let text = if path.ends_with(".pem") {
                key.clone()
            } else if path.contains("webhook") {
                "https://hooks.slack.example/services/T0/B0/x".to_owned()
            } else {
                "0123456789abcdef0123456789abcdef".to_owned()
            };
            std::fs::write(secrets.join(path), text).unwrap();
        }
    }
    let file = dir.join("config.toml");
    std::fs::write(
        &file,
        toml.replace("\"/secrets/", &format!("\"{}/", secrets.display())),
    )
    .unwrap();
    file
}

/// An ed25519 private key in PKCS#8 PEM, as `openssl genpkey -algorithm ed25519` writes.
fn evidence_locker_test_key() -> String {
    use ed25519_dalek::pkcs8::EncodePrivateKey;
    ed25519_dalek::SigningKey::from_bytes(&[7; 32])
        .to_pkcs8_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)
        .unwrap()
        .to_string()
}

fn config_check(file: &Path, env: &[(&str, String)]) -> std::process::Output {
    run_cli(
        &["config", "check", "--config", file.to_str().unwrap()],
        env,
    )
}

#[test]
fn every_manifest_parses_and_has_the_kinds_a_deployment_needs() {
    let k = kubernetes();
    for kind in [
        "ServiceAccount",
        "ConfigMap",
        "StatefulSet",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "Ingress",
        "ServiceMonitor",
        "PrometheusRule",
        "Job",
        "Kustomization",
    ] {
        assert!(
            k.contains_key(kind),
            "no {kind} in deploy/kubernetes: {:?}",
            k.keys()
        );
    }
    // Every resource kustomize is given (or offered, commented out) exists.
    let kustomization =
        std::fs::read_to_string(root().join("deploy/kubernetes/kustomization.yaml")).unwrap();
    let listed: Vec<&str> = kustomization
        .lines()
        .filter_map(|l| l.trim().trim_start_matches('#').trim().strip_prefix("- "))
        .filter(|l| l.ends_with(".yaml"))
        .collect();
    assert!(listed.len() >= 7, "{listed:?}");
    for f in &listed {
        assert!(
            root().join("deploy/kubernetes").join(f).exists(),
            "kustomization.yaml lists {f}, which does not exist"
        );
    }
    // The worker: non-root, read-only root filesystem, probes on its metrics port, a volume per
    // pod for the spool, a grace period longer than worker.shutdown_grace.
    let worker = &k["StatefulSet"][0];
    let pod = &worker["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    let c = &pod["containers"][0];
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    assert!(c["resources"]["requests"]["cpu"].is_string());
    assert!(c["resources"]["requests"]["memory"].is_string());
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(
        worker["spec"]["volumeClaimTemplates"][0]["metadata"]["name"],
        "spool"
    );
    let toml = configmap_toml(&k);
    let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
    let shutdown: u64 = toml
        .lines()
        .find_map(|l| l.trim().strip_prefix("shutdown_grace = \""))
        .and_then(|v| v.trim_end_matches('"').strip_suffix('s'))
        .and_then(|v| v.parse().ok())
        .expect("the ConfigMap sets worker.shutdown_grace in seconds");
    assert!(
        grace >= shutdown + 5,
        "terminationGracePeriodSeconds {grace} leaves no time after worker.shutdown_grace {shutdown}s"
    );
    // The spool is where the volume is mounted.
    let spool_mount = c["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "spool")
        .unwrap()["mountPath"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        toml.contains(&format!("spool = \"{spool_mount}\"")),
        "{toml}"
    );
    // The disruption budgets select pods that exist.
    let labels: BTreeSet<String> = ["StatefulSet", "Deployment"]
        .iter()
        .flat_map(|kind| &k[*kind])
        .map(|o| {
            o["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/name"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    for pdb in &k["PodDisruptionBudget"] {
        let name = pdb["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"]
            .as_str()
            .unwrap();
        assert!(
            labels.contains(name),
            "a PodDisruptionBudget selects {name}"
        );
    }
    // Every alert has a summary and a runbook section in the README.
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let rules = &k["PrometheusRule"][0]["spec"]["groups"][0]["rules"];
    for rule in rules.as_array().unwrap() {
        let alert = rule["alert"].as_str().unwrap();
        assert!(rule["annotations"]["summary"].is_string(), "{alert}");
        let anchor = rule["annotations"]["runbook_url"]
            .as_str()
            .and_then(|u| u.rsplit_once('#'))
            .map(|(_, a)| a.to_owned())
            .unwrap_or_else(|| panic!("{alert} has no runbook_url"));
        let section = readme
            .lines()
            .filter_map(|l| l.strip_prefix("### "))
            .find(|h| h.to_ascii_lowercase().replace(' ', "-") == anchor);
        assert!(section.is_some(), "{alert}: no README section #{anchor}");
    }
}

#[test]
fn every_command_port_probe_and_mount_the_manifests_name_is_the_program_s() {
    let k = kubernetes();
    let toml = configmap_toml(&k);
    let port_of = |key: &str| -> u64 {
        toml.lines()
            .skip_while(|l| l.trim() != format!("[{key}]"))
            .find_map(|l| l.trim().strip_prefix("listen = \""))
            .and_then(|v| v.trim_end_matches('"').rsplit_once(':'))
            .and_then(|(_, p)| p.parse().ok())
            .unwrap_or_else(|| panic!("the ConfigMap sets {key}.listen"))
    };
    let (metrics_port, intake_port) = (port_of("metrics"), port_of("intake"));
    let kustomization =
        std::fs::read_to_string(root().join("deploy/kubernetes/kustomization.yaml")).unwrap();
    let mut containers = Vec::new();
    for kind in ["StatefulSet", "Deployment", "Job"] {
        for o in &k[kind] {
            for c in o["spec"]["template"]["spec"]["containers"]
                .as_array()
                .unwrap()
            {
                containers.push((kind, o["spec"]["template"]["spec"].clone(), c.clone()));
            }
        }
    }
    assert_eq!(containers.len(), 3);
    let served = |path: &str, component: &str| {
        let src = std::fs::read_to_string(root().join(format!("src/{component}/mod.rs"))).unwrap();
        src.contains(&format!(".route(\"{path}\""))
            || src.contains(&format!(".route(\n            \"{path}\""))
    };
    for (kind, pod, c) in &containers {
        // The image is the one kustomize rewrites.
        assert_eq!(c["image"], "evidence-locker", "{kind}");
        assert!(kustomization.contains("- name: evidence-locker"));
        // The command exists and takes the flags given.
        let args: Vec<&str> = c["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        let help = run_cli(&[args[0], "--help"], &[]);
        assert!(help.status.success(), "{kind}: `{}` is no command", args[0]);
        for flag in args.iter().filter(|a| a.starts_with("--")) {
            assert!(
                stdout(&help).contains(flag),
                "{kind}: `{} {flag}` is no flag",
                args[0]
            );
        }
        // --config names a file in a mounted volume.
        if let Some(i) = args.iter().position(|a| *a == "--config") {
            let mounted = c["volumeMounts"]
                .as_array()
                .unwrap()
                .iter()
                .any(|m| args[i + 1].starts_with(m["mountPath"].as_str().unwrap()));
            assert!(
                mounted,
                "{kind}: {} is not in a mounted volume",
                args[i + 1]
            );
        }
        // Ports and probes: the ConfigMap's listen ports, and paths the component serves.
        let component = args[0];
        if component == "collect" {
            continue;
        }
        let port = c["ports"][0]["containerPort"].as_u64().unwrap();
        let want = if component == "worker" {
            metrics_port
        } else {
            intake_port
        };
        assert_eq!(port, want, "{kind}: containerPort");
        for probe in ["readinessProbe", "livenessProbe"] {
            let path = c[probe]["httpGet"]["path"].as_str().unwrap();
            assert!(
                served(path, component),
                "{kind}: {component} does not serve {path}"
            );
            assert_eq!(
                c[probe]["httpGet"]["port"], c["ports"][0]["name"],
                "{kind} {probe}"
            );
        }
        // Every volume mounted is declared.
        let volumes: BTreeSet<&str> = pod["volumes"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|v| v["name"].as_str().unwrap())
            .chain(["spool"])
            .collect();
        for m in c["volumeMounts"].as_array().unwrap() {
            assert!(volumes.contains(m["name"].as_str().unwrap()), "{kind}: {m}");
        }
    }
    // The Services' target ports are container ports.
    for svc in &k["Service"] {
        for p in svc["spec"]["ports"].as_array().unwrap() {
            let target = p["targetPort"].as_str().unwrap();
            assert!(
                containers
                    .iter()
                    .any(|(_, _, c)| c["ports"][0]["name"] == target),
                "Service port {target}"
            );
        }
    }
    // The ServiceMonitor scrapes named ports that exist, on /metrics.
    for ep in k["ServiceMonitor"][0]["spec"]["endpoints"]
        .as_array()
        .unwrap()
    {
        assert_eq!(ep["path"], "/metrics");
        let port = ep["port"].as_str().unwrap();
        assert!(
            k["Service"].iter().any(|s| s["spec"]["ports"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["name"] == port)),
            "ServiceMonitor port {port}"
        );
    }
    // The systemd units run commands that exist.
    for unit in [
        "evidence-locker-worker.service",
        "evidence-locker-intake.service",
    ] {
        let text = std::fs::read_to_string(root().join("deploy/systemd").join(unit)).unwrap();
        for line in text.lines().filter(|l| l.starts_with("ExecStart")) {
            let words: Vec<&str> = line.split_whitespace().collect();
            let sub: Vec<&str> = words[1..]
                .iter()
                .copied()
                .take_while(|w| !w.starts_with("--"))
                .collect();
            let mut help_args = sub.clone();
            help_args.push("--help");
            let help = run_cli(&help_args, &[]);
            assert!(help.status.success(), "{unit}: {line}");
            for flag in words.iter().filter(|w| w.starts_with("--")) {
                assert!(stdout(&help).contains(flag), "{unit}: {flag}");
            }
        }
    }
}

#[test]
fn the_configmap_s_configuration_passes_config_check_and_a_broken_one_names_each_key() {
    let k = kubernetes();
    let toml = configmap_toml(&k);
    let dir = tempfile::tempdir().unwrap();
    let file = configmap_here(&toml, dir.path());
    let out = config_check(&file, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    // The effective configuration is printed with its secrets masked: the file paths shown,
    // the secrets' text not.
    let printed = stdout(&out);
    assert!(
        printed.contains("bucket = \"acme-incident-evidence\""),
        "{printed}"
    );
    assert!(printed.contains("bearer_token_file = "), "{printed}");
    assert!(
        !printed.contains("0123456789abcdef"),
        "a secret was printed:\n{printed}"
    );
    // Every secret file the ConfigMap names is a key of the Secret the README tells to create.
    let kustomization =
        std::fs::read_to_string(root().join("deploy/kubernetes/kustomization.yaml")).unwrap();
    for line in toml.lines() {
        if let Some(key) = line
            .split('"')
            .nth(1)
            .and_then(|v| v.strip_prefix("/secrets/"))
        {
            assert!(
                kustomization.contains(&format!("--from-literal={key}="))
                    || kustomization.contains(&format!("--from-file={key}=")),
                "the Secret to create lacks {key}"
            );
        }
    }
    // Three bad values and a missing secret file: each named, exit 1.
    let broken = toml
        .replace("kind = \"s3\"", "kind = \"ftp\"")
        .replace("retention = \"72h\"", "retention = \"three days\"")
        .replace("spool_max = \"8GiB\"", "spool_max = \"lots\"");
    // The secret files are named where none exist.
    let missing_secrets = format!("\"{}/", dir.path().join("none").display());
    let broken_file = dir.path().join("broken.toml");
    let check_broken = |text: &str| {
        std::fs::write(&broken_file, text.replace("\"/secrets/", &missing_secrets)).unwrap();
        let out = config_check(&broken_file, &[]);
        assert_eq!(out.status.code(), Some(1));
        stderr(&out)
    };
    let err = check_broken(&broken);
    assert!(
        err.contains("backends.default.retention"),
        "the bad duration is not named:\n{err}"
    );
    // With the type error fixed, every other problem is named at once.
    let err = check_broken(&broken.replace("retention = \"three days\"", "retention = \"72h\""));
    for key in [
        "store.kind",
        "worker.spool_max",
        "intake.bearer_token_file",
        "signing.key_file",
        "notify.webhook_url_file",
    ] {
        assert!(err.contains(key), "{key} is not named:\n{err}");
    }
    // Start-up runs the same validation: the worker refuses the broken file, naming a key.
    let out = run_cli(&["worker", "--config", broken_file.to_str().unwrap()], &[]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("store.kind"), "{}", stderr(&out));
}

#[test]
fn the_local_stack_s_environment_is_a_valid_configuration() {
    let docs = yaml_documents(&[root().join("deploy/docker-compose.yml")]);
    let compose = &docs[0].1;
    for service in ["nats", "minio", "jaeger", "intake", "worker"] {
        assert!(
            compose["services"][service].is_object(),
            "docker-compose.yml has no {service}"
        );
    }
    for service in ["intake", "worker"] {
        let s = &compose["services"][service];
        assert_eq!(s["build"]["dockerfile"], "deploy/Dockerfile");
        let env: Vec<(String, String)> = s["environment"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
            .collect();
        let env: Vec<(&str, String)> = env.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
        let out = run_cli(&["config", "check", "--quiet"], &env);
        assert!(
            out.status.success(),
            "{service}'s environment: {}",
            stderr(&out)
        );
        let command = s["command"][0].as_str().unwrap();
        assert!(run_cli(&[command, "--help"], &[]).status.success());
    }
    assert!(root().join("deploy/Dockerfile").exists());
}
