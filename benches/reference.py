#!/usr/bin/env python3
"""The reference for the collect benchmark: what the seed's script did, and nothing more.

Loads each trace of a Jaeger JSON Lines file, lists its error spans and sorts them by start time.
Usage: reference.py TRACES.jsonl  (prints the number of error spans and the first few)
"""
import json
import sys


def main(path):
    errors = []
    with open(path, "rb") as f:
        for line in f:
            if not line.strip():
                continue
            trace = json.loads(line)
            processes = trace.get("processes", {})
            for span in trace.get("spans", []):
                for tag in span.get("tags", []):
                    if tag.get("key") == "error" and tag.get("value") in (True, "true"):
                        service = processes.get(span.get("processID"), {}).get("serviceName", "?")
                        errors.append((span["startTime"], service, span["operationName"], span["traceID"]))
                        break
    errors.sort()
    print(len(errors), "error spans")
    for e in errors[:3]:
        print(*e)


if __name__ == "__main__":
    main(sys.argv[1])
