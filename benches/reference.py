#!/usr/bin/env python3
"""The reference for the collect benchmark: what the seed's timeline script did, its own way.

For each trace of a Jaeger JSON Lines file: build a dictionary of each span's tags, and for each
error span (tag error=true) create a datetime of its start; then sort the error spans by time.
Usage: reference.py TRACES.jsonl  (prints the number of spans and error spans, and the first few)
"""
import datetime
import json
import sys


def main(path):
    errors = []
    spans = 0
    with open(path, "rb") as f:
        for line in f:
            if not line.strip():
                continue
            trace = json.loads(line)
            processes = trace.get("processes", {})
            for span in trace.get("spans", []):
                spans += 1
                tags = {t.get("key"): t.get("value") for t in span.get("tags", [])}
                if tags.get("error") in (True, "true"):
                    started = datetime.datetime.fromtimestamp(
                        span["startTime"] / 1e6, tz=datetime.timezone.utc
                    )
                    service = processes.get(span.get("processID"), {}).get("serviceName", "?")
                    errors.append((started, service, span["operationName"], span["traceID"]))
    errors.sort()
    print(spans, "spans,", len(errors), "error spans")
    for e in errors[:3]:
        print(e[0].isoformat(), *e[1:])


if __name__ == "__main__":
    main(sys.argv[1])
