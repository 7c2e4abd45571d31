#!/usr/bin/env python3
"""Mutation test for infra/validate.py: copies the templates, breaks each copy in one
deliberate way, and asserts the validation reports exactly that break.

    python infra/tests/mutations.py [--kit DIR]

Run with the venv Python from scripts/setup.d/40-infra.sh. Exit 0 only if every
mutation was caught (and the unmutated copy passed) - i.e. this test fails when the
validation would let one of these mistakes through.
"""
from __future__ import annotations

import argparse
import copy
import json
import pathlib
import subprocess
import sys
import tempfile

INFRA = pathlib.Path(__file__).resolve().parents[1]
VALIDATE = INFRA / "validate.py"


def nested(doc, deployment_name_part):
    for r in doc["resources"]:
        if r["type"] == "Microsoft.Resources/deployments" and deployment_name_part in r["name"]:
            return r["properties"]["template"]
    raise KeyError(deployment_name_part)


def by_type(resources, type_):
    return next(r for r in resources if r["type"] == type_)


def bad_enum(main, _example):
    by_type(main["resources"], "Microsoft.Storage/storageAccounts")["properties"]["minimumTlsVersion"] = "TLS1_9"


def unknown_property(main, _example):
    by_type(main["resources"], "Microsoft.Web/sites")["properties"]["httpsOnlyy"] = True


def registry_without_cmk(_main, example):
    del by_type(example["resources"], "Microsoft.ContainerRegistry/registries")["properties"]["encryption"]


def missing_dead_letter(main, _example):
    sub = by_type(nested(main, "-vault-")["resources"], "Microsoft.EventGrid/systemTopics/eventSubscriptions")
    del sub["properties"]["deadLetterWithResourceIdentity"]


def unknown_function(main, _example):
    sub = by_type(nested(main, "-sub-events")["resources"], "Microsoft.EventGrid/systemTopics/eventSubscriptions")
    dest = sub["properties"]["destination"]["properties"]
    assert "RegistryEvents" in dest["resourceId"]
    dest["resourceId"] = dest["resourceId"].replace("RegistryEvents", "RegistryEvent")


# (name, mutate, which validation stage, text the report must contain)
MUTATIONS = [
    ("bad enum", bad_enum, "schema", "'TLS1_9' is not one of"),
    ("unknown property", unknown_property, "schema", "'httpsOnlyy' was unexpected"),
    ("registry without CMK", registry_without_cmk, "checkov", "CKV_CUSTOM_ACR_1"),
    ("missing dead-letter", missing_dead_letter, "checkov", "CHECKOV FAILED CKV_CMKG_1"),
    ("function that does not exist", unknown_function, "checkov", "CHECKOV FAILED CKV_CMKG_3"),
]


def run(kit, stage, folder):
    proc = subprocess.run([sys.executable, str(VALIDATE), "--kit", str(kit), "--only", stage, str(folder)],
                          capture_output=True, text=True, timeout=600)
    return proc.returncode, proc.stdout + proc.stderr


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--kit", type=pathlib.Path, default=INFRA.parent.parent / "shared" / "arm-schemas")
    args = ap.parse_args()
    main_doc = json.loads((INFRA / "main.json").read_text())
    example_doc = json.loads((INFRA / "examples" / "registry-cmk.json").read_text())
    passed = failed = 0
    with tempfile.TemporaryDirectory() as tmp:
        for name, mutate, stage, expect in [("unmutated copy", None, "checkov", None)] + MUTATIONS:
            folder = pathlib.Path(tmp) / name.replace(" ", "-")
            (folder / "examples").mkdir(parents=True)
            m, e = copy.deepcopy(main_doc), copy.deepcopy(example_doc)
            if mutate:
                mutate(m, e)
            (folder / "main.json").write_text(json.dumps(m, indent=2))
            (folder / "examples" / "registry-cmk.json").write_text(json.dumps(e, indent=2))
            code, out = run(args.kit, stage, folder)
            if mutate is None:
                ok = code == 0
                why = "" if ok else f"the unmutated copy failed validation:\n{out}"
            else:
                ok = code == 1 and expect in out
                why = "" if ok else f"expected exit 1 and {expect!r}, got exit {code}:\n{out}"
            print(f"{'ok  ' if ok else 'FAIL'} {name} ({stage})" + (f": {why}" if why else ""))
            passed, failed = passed + ok, failed + (not ok)
    print(f"mutations: {passed} passed, {failed} failed")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
