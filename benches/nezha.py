#!/usr/bin/env python3
"""Root-cause ranking accuracy on the Nezha benchmark (../shared/datasets/nezha, 30 labelled faults).

For each case: `evidence-locker collect --traces-file <case> --incident <inject_time>`; the ranked
services of analysis.json's `ranking` are compared with the label's `root_cause_service` (top-1,
top-3), as the dataset's README says to score. Prints a Markdown table: overall, per system, per
fault type. Usage: benches/nezha.py [--binary target/release/evidence-locker] [--details]
"""
import argparse
import collections
import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
DATA = os.path.join(ROOT, "..", "shared", "datasets", "nezha")


def ranked_services(binary, case, workdir):
    incident = {
        "id": "nezha-" + case["file"].split(".")[0],
        "title": "Nezha " + case["fault_type"],
        "declared_at": case["inject_time"],
        "started_at": case["baseline_end"],
    }
    path = os.path.join(workdir, "incident.json")
    with open(path, "w") as f:
        json.dump(incident, f)
    out = subprocess.run(
        [binary, "collect", "--incident", path, "--traces-file", os.path.join(DATA, case["file"]),
         "--out", os.path.join(workdir, "evidence")],
        capture_output=True, text=True, env=dict(os.environ, RUST_LOG="error"),
    )
    if out.returncode != 0:
        sys.exit(f"{case['file']}: collect failed: {out.stderr}")
    bundle = out.stdout.splitlines()[0]
    with open(os.path.join(bundle, "analysis.json")) as f:
        analysis = json.load(f)
    services = []
    for c in analysis["ranking"]:
        if c["service"] not in services:
            services.append(c["service"])
    return services, analysis["ranking"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", default=os.path.join(ROOT, "target", "release", "evidence-locker"))
    ap.add_argument("--details", action="store_true")
    args = ap.parse_args()
    with open(os.path.join(DATA, "labels.json")) as f:
        labels = json.load(f)
    groups = collections.defaultdict(lambda: [0, 0, 0])  # cases, top1, top3
    with tempfile.TemporaryDirectory() as tmp:
        for n, case in enumerate(labels):
            work = os.path.join(tmp, str(n))
            os.makedirs(work)
            services, ranking = ranked_services(args.binary, case, work)
            truth = case["root_cause_service"]
            top1 = services[:1] == [truth]
            top3 = truth in services[:3]
            for key in ("overall", case["system"], case["fault_type"]):
                g = groups[key]
                g[0] += 1
                g[1] += top1
                g[2] += top3
            if args.details:
                mark = "top-1" if top1 else ("top-3" if top3 else "miss")
                print(f"{case['file']:60s} {truth:32s} {mark:6s} {services[:3]}", file=sys.stderr)
                if not top3:
                    for c in ranking[:3]:
                        print(f"    {c['score']:.3f} {c['reason'][:160]}", file=sys.stderr)
    print("| cases | n | top-1 | top-3 |\n|---|---|---|---|")
    order = ["overall", "onlineboutique", "trainticket",
             "cpu_contention", "cpu_consumed", "network_delay", "return", "exception"]
    for key in order:
        if key in groups:
            n, t1, t3 = groups[key]
            print(f"| {key} | {n} | {t1}/{n} = {100 * t1 / n:.0f}% | {t3}/{n} = {100 * t3 / n:.0f}% |")


if __name__ == "__main__":
    main()
