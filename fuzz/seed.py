#!/usr/bin/env python3
"""Builds the fuzz targets' seed corpora from the repository's fixtures.

Usage: fuzz/seed.py OUT_DIR   (writes OUT_DIR/<target>/<name>; run from anywhere)

Sources: the Azure fixtures (../shared/azure-fixtures beside the repository, or
$CMKGUARD_FIXTURES), examples/invocations, policy-wasm/testcases, azsim/scenarios.
Each target gets its inputs in the shape it reads (e.g. Event Grid fixtures wrapped in a
Functions envelope for `invocation`, CloudEvents turned into `ce-*` headers for
`cloudevents_binary`).
"""
import glob
import json
import os
import sys

repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
fixtures = os.environ.get("CMKGUARD_FIXTURES") or os.path.join(repo, "..", "shared", "azure-fixtures")
out = sys.argv[1]


def put(target, name, data):
    d = os.path.join(out, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())


def load(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


events = {}  # name -> event JSON value (one event or an array)
for p in sorted(glob.glob(os.path.join(fixtures, "eventgrid", "*.json"))):
    events[os.path.basename(p)] = load(p)
for p in sorted(glob.glob(os.path.join(repo, "examples", "invocations", "*.json"))):
    inv = load(p)
    put("invocation", os.path.basename(p), json.dumps(inv))
    for v in inv.get("Data", {}).values():
        while isinstance(v, str):
            v = json.loads(v)
        events["example." + os.path.basename(p)] = v
# Key Vault key events in both schemas, from the secret-event fixtures (same data shape).
for name, ev in list(events.items()):
    if name.startswith("keyvault.SecretNewVersionCreated"):
        text = json.dumps(ev).replace("secrets/", "keys/").replace('"Secret"', '"Key"')
        for t in ("KeyNearExpiry", "KeyExpired", "KeyNewVersionCreated"):
            events[name.replace("SecretNewVersionCreated", t)] = json.loads(
                text.replace("SecretNewVersionCreated", t))
if not events:
    sys.exit(f"seed.py: no event fixtures found under {fixtures} (set CMKGUARD_FIXTURES)")
for p in sorted(glob.glob(os.path.join(fixtures, "functions", "invocation-request*.json"))):
    put("invocation", os.path.basename(p), open(p, "rb").read())

for name, ev in events.items():
    put("decode_events", name, json.dumps(ev))
    put("invocation", "object." + name, json.dumps({"Data": {"event": ev}, "Metadata": {}}))
    put("invocation", "string." + name, json.dumps({"Data": {"event": json.dumps(ev)}, "Metadata": {}}))
    for i, one in enumerate(ev if isinstance(ev, list) else [ev]):
        if "specversion" not in one:
            continue
        head = [f"ce-{k}: {v}" for k, v in one.items() if k not in ("data", "datacontenttype")]
        head.append("content-type: " + one.get("datacontenttype", "application/json"))
        body = json.dumps(one.get("data", {}))
        put("cloudevents_binary", f"{i}.{name}", "\n".join(head) + "\n\n" + body)

for p in sorted(glob.glob(os.path.join(repo, "policy-wasm", "testcases", "*.json"))):
    case = load(p)
    name = os.path.basename(p)
    put("facts", "input." + name, json.dumps(case["input"]))
    for policy, want in case.get("expect", {}).items():
        if "error" not in want:
            put("facts", f"expect.{policy}.{name}", json.dumps(want))

for p in sorted(glob.glob(os.path.join(repo, "azsim", "scenarios", "*.json"))):
    put("scenario", os.path.basename(p), open(p, "rb").read())

# The validator reads structured bytes (arbitrary::Unstructured); a few plain seeds.
for i, seed in enumerate([b"\x00" * 64, bytes(range(256)), b"\x01\x02\x03\x04" * 32]):
    put("validate", f"bytes{i}", seed)
