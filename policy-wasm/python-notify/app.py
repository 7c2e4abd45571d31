"""python-notify: a cmkguard policy for an organisation that only wants to be told.

It never remediates: each problem becomes a finding and a notification routed to the
owning team's channel, read from a registry tag (``owner`` by default); problems with
no owning registry, and registries without the tag, go to the fallback channel.

Rules: PY001 registry without CMK (critical), PY003 key near expiry (medium),
PY004 registry pinned to an older key version after a new one appeared (low),
PY005 key expired, disabled or not RSA (critical), PY008 vault without soft delete or
purge protection (high).

Settings (JSON object, all optional): ``owner_tag`` (default "owner"),
``fallback_channel`` (default "ops"), ``warning_days`` (1-365, default 30).
"""

import json
import re

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import types as t

CONTRACT_VERSION = "1.0.0"
DAY = 86_400
CHANNEL = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
DEFAULTS = {"owner_tag": "owner", "fallback_channel": "ops", "warning_days": 30}


def parse_settings(text):
    try:
        raw = json.loads(text or "{}")
    except ValueError as e:
        raise Err(f"settings are not JSON: {e}")
    if not isinstance(raw, dict):
        raise Err("settings must be a JSON object")
    unknown = sorted(set(raw) - set(DEFAULTS))
    if unknown:
        raise Err(f"unknown setting {unknown[0]!r} (known: {', '.join(sorted(DEFAULTS))})")
    s = dict(DEFAULTS, **raw)
    days = s["warning_days"]
    if not isinstance(days, int) or isinstance(days, bool) or not 1 <= days <= 365:
        raise Err(f"warning_days must be an integer between 1 and 365, not {days!r}")
    if not isinstance(s["fallback_channel"], str) or not CHANNEL.match(s["fallback_channel"]):
        raise Err("fallback_channel must be 1-64 letters, digits, - or _")
    if not isinstance(s["owner_tag"], str) or not s["owner_tag"].strip():
        raise Err("owner_tag must be a non-empty string")
    return s


def key_parts(key_id):
    """(host, name, version or None) of a Key Vault key id, or None."""
    m = re.match(r"^https://([^/]+)/keys/([^/]+)(?:/([^/]+))?/?$", (key_id or "").strip(), re.IGNORECASE)
    if not m:
        return None
    return (m.group(1).lower().removesuffix(":443"), m.group(2).lower(), m.group(3))


class Router:
    def __init__(self, settings):
        self.settings = settings

    def channel(self, registry):
        tag = self.settings["owner_tag"].lower()
        for name, value in registry.tags if registry else []:
            if name.lower() == tag and CHANNEL.match(value.strip()):
                return value.strip()
        return self.settings["fallback_channel"]

    def channels(self, registries):
        out = []
        for r in registries:
            c = self.channel(r)
            if c not in out:
                out.append(c)
        return out or [self.settings["fallback_channel"]]


class Evaluator(exports.Evaluator):
    def metadata(self):
        return t.PolicyMetadata(name="python-notify", version="1.0.0", contract_version=CONTRACT_VERSION)

    def validate_settings(self, settings):
        parse_settings(settings)

    def evaluate(self, input):
        s = parse_settings(input.settings)
        route = Router(s)
        findings, actions = [], []

        def report(rule, severity, resource, title, message, channels):
            findings.append(t.Finding(rule_id=rule, severity=severity, resource=resource, message=message))
            for c in channels:
                actions.append(t.Action_Notify(t.Notify(channel=c, severity=severity, title=title, text=message)))

        kind = input.event.kind
        if kind in (t.EventKind.REGISTRY_WRITTEN, t.EventKind.SWEEP):
            for r in input.registries:
                if not r.encryption_enabled:
                    report("PY001", t.Severity.CRITICAL, r.id, f"{r.name}: no customer-managed key",
                           f"Registry {r.name} ({r.sku}) is not encrypted with a customer-managed key; "
                           "it must be recreated (CMK is chosen at creation, Premium only).",
                           [route.channel(r)])

        key = input.key
        if key is not None:
            kp = key_parts(key.key_id)
            users = [r for r in input.registries
                     if kp and key_parts(r.key_identifier) and key_parts(r.key_identifier)[:2] == kp[:2]]
            names = ", ".join(r.name for r in users) or "no registry in scope"
            now = input.now
            problems = []
            if (key.expires is not None and key.expires <= now) or kind == t.EventKind.KEY_EXPIRED:
                problems.append("expired")
            if not key.enabled:
                problems.append("disabled")
            if key.key_type.upper() not in ("RSA", "RSA-HSM"):
                problems.append(f"of type {key.key_type} (not RSA)")
            if problems:
                report("PY005", t.Severity.CRITICAL, key.key_id, f"{key.name}: key unusable",
                       f"Key {key.name} is {' and '.join(problems)}; registries using it: {names}.",
                       route.channels(users))
            elif key.expires is not None and key.expires - now <= s["warning_days"] * DAY or kind == t.EventKind.KEY_NEAR_EXPIRY:
                left = f"{(key.expires - now) // DAY} day(s)" if key.expires is not None else "an unknown number of days"
                report("PY003", t.Severity.MEDIUM, key.key_id, f"{key.name}: key expires soon",
                       f"Key {key.name} expires in {left}; registries using it: {names}.",
                       route.channels(users))
            if key.vault.soft_delete is False or key.vault.purge_protection is False:
                report("PY008", t.Severity.HIGH, key.vault_uri, "vault can lose the key",
                       f"Vault {key.vault_uri} lacks soft delete or purge protection.",
                       [s["fallback_channel"]])
            if kind == t.EventKind.KEY_NEW_VERSION_CREATED and kp and not problems:
                for r in users:
                    rp = key_parts(r.key_identifier)
                    if rp[2] is not None and rp[2].lower() != (kp[2] or "").lower():
                        report("PY004", t.Severity.LOW, r.id, f"{r.name}: pinned to an old key version",
                               f"Registry {r.name} is pinned to key version {rp[2]}; version {kp[2]} is newer. "
                               "Rotate it (az acr encryption rotate-key).",
                               [route.channel(r)])
        return t.Decision(findings=findings, actions=actions)
