#!/usr/bin/env python3
"""Validate cmkguard's ARM templates offline: JSON schema (plain and --strict) with the
shared arm-schemas kit, then checkov with the kit's and our own custom checks.

    python infra/validate.py [--kit DIR] [--only schema|checkov] [PATH ...]

PATH defaults to infra/ (its *.json and examples/*.json). Run with the Python of the
venv that scripts/setup.d/40-infra.sh creates (jsonschema + checkov).

Fails (exit 1) when any file is schema-invalid, when checkov reports a failed check
(other than those accepted, with a reason, in infra/checkov/accepted.txt), when checkov
could not parse a file or did not scan one (checkov itself exits 0 on parse errors and
silently skips JSON it does not recognise as a template), or when the custom checks did
not run (checkov skips a check folder silently if it cannot load it).
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import re
import subprocess
import sys
import tempfile

INFRA = pathlib.Path(__file__).resolve().parent
REPO = INFRA.parent
CUSTOM_CHECKS = INFRA / "checkov"

# --strict closes every provider object, but the kit's list of resource envelope keys
# lacks the cross-scope keys of a nested deployment (ARM reads `subscriptionId` and
# `resourceGroup` on Microsoft.Resources/deployments to target another scope).
CROSS_SCOPE_KEYS = {"subscriptionId", "resourceGroup"}
UNEXPECTED = re.compile(r"^(?P<path>\S+): Additional properties are not allowed \((?P<keys>.*) (?:was|were) unexpected\)$")


def template_files(paths: list[pathlib.Path]) -> list[pathlib.Path]:
    out: list[pathlib.Path] = []
    for p in paths:
        if p.is_dir():
            out += sorted(p.glob("*.json")) + sorted(p.glob("examples/*.json"))
        else:
            out.append(p)
    return out


def resource_at(doc, pointer: str):
    node = doc
    for part in pointer.strip("/").split("/"):
        if isinstance(node, list) and part.isdigit():
            node = node[int(part)]
        elif isinstance(node, dict) and part in node:
            node = node[part]
        else:
            return None
    return node


def is_cross_scope_false_positive(doc, message: str) -> bool:
    m = UNEXPECTED.match(message)
    if not m:
        return False
    keys = set(re.findall(r"'([^']+)'", m.group("keys")))
    node = resource_at(doc, m.group("path"))
    return (bool(keys) and keys <= CROSS_SCOPE_KEYS and isinstance(node, dict)
            and str(node.get("type", "")).lower() == "microsoft.resources/deployments")


def schema_check(kit: pathlib.Path, files: list[pathlib.Path]) -> bool:
    sys.path.insert(0, str(kit / "tools"))
    import validate_arm  # the shared kit's validator (offline; never fetches)

    ok = True
    index = validate_arm.provider_index()
    for strict in (False, True):
        registry = validate_arm.make_registry(strict)
        for f in files:
            try:
                doc = json.loads(f.read_text())
            except (OSError, ValueError) as e:
                print(f"SCHEMA ERROR {f}: cannot read JSON: {e}")
                ok = False
                continue
            errors, _warnings, fatal = validate_arm.validate_doc(doc, registry, index)
            if strict:
                errors = [e for e in errors if not is_cross_scope_false_positive(doc, e)]
            label = "strict" if strict else "schema"
            for e in list(fatal or []) + list(errors):
                print(f"SCHEMA INVALID ({label}) {f.relative_to(REPO) if f.is_relative_to(REPO) else f}: {e}")
                ok = False
            if not errors and not fatal:
                print(f"schema ok ({label}) {f.name}")
    return ok


def accepted_checks() -> dict[str, str]:
    out = {}
    for line in (CUSTOM_CHECKS / "accepted.txt").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            check_id, _, reason = line.partition(" ")
            if not reason.strip():
                raise SystemExit(f"accepted.txt: {check_id} has no reason")
            out[check_id] = reason.strip()
    return out


def checkov_check(kit: pathlib.Path, files: list[pathlib.Path]) -> bool:
    templates = [f for f in files if "deploymentTemplate.json" in f.read_text()[:400]]
    if not templates:
        print("checkov: no templates to scan")
        return False
    skip = accepted_checks()
    checkov = pathlib.Path(sys.executable).parent / "checkov"
    env = dict(os.environ, BC_SKIP_MAPPING="TRUE", CKV_SKIP_PACKAGE_UPDATE_CHECK="TRUE", LOG_LEVEL="ERROR")
    cmd = [str(checkov), "--framework", "arm", "--skip-download", "--soft-fail", "-o", "json",
           "--external-checks-dir", str(kit / "checkov-custom"),
           "--external-checks-dir", str(CUSTOM_CHECKS),
           "--skip-check", ",".join(sorted(skip))]
    for t in templates:
        cmd += ["-f", str(t)]
    with tempfile.TemporaryFile() as out:
        proc = subprocess.run(cmd, stdout=out, stderr=subprocess.PIPE, env=env, cwd=REPO, timeout=600)
        out.seek(0)
        raw = out.read().decode()
    try:
        report = json.loads(raw)
    except ValueError:
        print(f"checkov: no JSON report (exit {proc.returncode}): {proc.stderr.decode()[-2000:]}")
        return False
    reports = report if isinstance(report, list) else [report]
    ok = True
    scanned, ran = set(), set()
    for r in reports:
        summary = r.get("summary", r)
        if summary.get("parsing_errors"):
            print(f"checkov: could not parse {summary['parsing_errors']} file(s): {r.get('results', {}).get('parsing_errors', '')}")
            ok = False
        results = r.get("results", {})
        for rec in results.get("passed_checks", []) + results.get("failed_checks", []):
            scanned.add(pathlib.Path(rec["file_abs_path"]).resolve())
            ran.add(rec["check_id"])
        for rec in results.get("failed_checks", []):
            print(f"CHECKOV FAILED {rec['check_id']} {rec['file_path']} {rec['resource']}: {rec['check_name']}")
            ok = False
    for t in templates:
        if t.resolve() not in scanned:
            print(f"checkov: {t} was not scanned (not recognised as an ARM template?)")
            ok = False
    own = {"CKV_CMKG_1", "CKV_CMKG_2", "CKV_CMKG_3", "CKV_CMKG_4", "CKV_CMKG_5"}
    text = "".join(t.read_text() for t in templates)
    if "Microsoft.ContainerRegistry/registries" in text:
        own |= {"CKV_CUSTOM_ACR_1", "CKV_CMKG_7"}
    if '"Microsoft.KeyVault/vaults"' in text:
        own.add("CKV_CMKG_6")
    if not own <= ran:
        print(f"checkov: custom checks did not run: {sorted(own - ran)} (is infra/checkov/__init__.py there?)")
        ok = False
    if ok:
        print(f"checkov ok: {len(templates)} template(s), {len(ran)} distinct checks ran, "
              f"{len(skip)} accepted: {', '.join(sorted(skip))}")
    return ok


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kit", type=pathlib.Path,
                    default=pathlib.Path(os.environ.get("ARM_SCHEMAS_KIT", REPO.parent / "shared" / "arm-schemas")))
    ap.add_argument("--only", choices=["schema", "checkov"])
    ap.add_argument("paths", nargs="*", type=pathlib.Path)
    args = ap.parse_args(argv)
    if not (args.kit / "tools" / "validate_arm.py").is_file():
        print(f"arm-schemas kit not found at {args.kit} (set ARM_SCHEMAS_KIT)")
        return 2
    files = template_files(args.paths or [INFRA])
    if not files:
        print("no files to validate")
        return 2
    ok = True
    if args.only in (None, "schema"):
        ok &= schema_check(args.kit, files)
    if args.only in (None, "checkov"):
        ok &= checkov_check(args.kit, files)
    print("infra validation:", "OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
