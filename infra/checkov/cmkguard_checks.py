"""cmkguard's own checkov checks for the ARM templates in infra/.

Loaded with `--external-checks-dir infra/checkov` (this folder needs its __init__.py,
or checkov skips Python checks silently; infra/validate.py verifies they ran). Each
check guards a property the deployment relies on and that the ARM schemas cannot
express: dead-lettering and retries on every event subscription, event subscriptions
that target a function this repository actually ships, storage and function-app
hardening, a vault fit to hold registry keys, and a registry CMK set up so that key
rotation works (user-assigned identity, versionless key id).
"""
from __future__ import annotations

import pathlib
import re

from checkov.arm.base_resource_check import BaseResourceCheck
from checkov.common.models.enums import CheckCategories, CheckResult

# functions/<Name>/function.json at the repository root (this file is infra/checkov/...).
FUNCTIONS_DIR = pathlib.Path(__file__).resolve().parents[2] / "functions"

EVENT_SUBSCRIPTION_TYPES = [
    "Microsoft.EventGrid/systemTopics/eventSubscriptions",
    "Microsoft.EventGrid/eventSubscriptions",
    "Microsoft.EventGrid/topics/eventSubscriptions",
    "Microsoft.EventGrid/domains/topics/eventSubscriptions",
    "Microsoft.EventGrid/partnerTopics/eventSubscriptions",
]


def _get(conf, *path):
    node = conf
    for key in path:
        if not isinstance(node, dict):
            return None
        node = node.get(key)
    return node


def _is_false(value) -> bool:
    return value is False or (isinstance(value, str) and value.strip().lower() == "false")


def _is_true(value) -> bool:
    return value is True or (isinstance(value, str) and value.strip().lower() == "true")


def _blob_dead_letter(dest) -> bool:
    if not isinstance(dest, dict) or str(dest.get("endpointType", "")).lower() != "storageblob":
        return False
    props = dest.get("properties")
    return isinstance(props, dict) and bool(props.get("resourceId")) and bool(props.get("blobContainerName"))


class EventSubscriptionDeadLetter(BaseResourceCheck):
    def __init__(self) -> None:
        super().__init__(
            name="Ensure an Event Grid event subscription dead-letters undeliverable events to blob storage",
            id="CKV_CMKG_1",
            categories=[CheckCategories.BACKUP_AND_RECOVERY],
            supported_resources=EVENT_SUBSCRIPTION_TYPES,
        )

    def scan_resource_conf(self, conf):
        props = _get(conf, "properties")
        if _blob_dead_letter(_get(props, "deadLetterDestination")):
            return CheckResult.PASSED
        with_identity = _get(props, "deadLetterWithResourceIdentity")
        if _blob_dead_letter(_get(with_identity, "deadLetterDestination")) and _get(with_identity, "identity", "type"):
            return CheckResult.PASSED
        return CheckResult.FAILED


class EventSubscriptionRetryPolicy(BaseResourceCheck):
    def __init__(self) -> None:
        super().__init__(
            name="Ensure an Event Grid event subscription sets an explicit retry policy",
            id="CKV_CMKG_2",
            categories=[CheckCategories.BACKUP_AND_RECOVERY],
            supported_resources=EVENT_SUBSCRIPTION_TYPES,
        )

    def scan_resource_conf(self, conf):
        retry = _get(conf, "properties", "retryPolicy")
        if isinstance(retry, dict) and retry.get("maxDeliveryAttempts") is not None \
                and retry.get("eventTimeToLiveInMinutes") is not None:
            return CheckResult.PASSED
        return CheckResult.FAILED


def shipped_functions() -> set[str]:
    return {p.parent.name for p in FUNCTIONS_DIR.glob("*/function.json")}


class EventSubscriptionTargetsShippedFunction(BaseResourceCheck):
    def __init__(self) -> None:
        super().__init__(
            name="Ensure an event subscription to an Azure Function targets a function folder this repository ships",
            id="CKV_CMKG_3",
            categories=[CheckCategories.GENERAL_SECURITY],
            supported_resources=EVENT_SUBSCRIPTION_TYPES,
        )

    def scan_resource_conf(self, conf):
        dest = _get(conf, "properties", "destination")
        if not isinstance(dest, dict) or str(dest.get("endpointType", "")).lower() != "azurefunction":
            return CheckResult.UNKNOWN
        resource_id = _get(dest, "properties", "resourceId")
        match = re.search(r"/functions/([A-Za-z0-9_-]+)", str(resource_id or ""))
        if match and match.group(1) in shipped_functions():
            return CheckResult.PASSED
        return CheckResult.FAILED


class StorageHardening(BaseResourceCheck):
    def __init__(self) -> None:
        super().__init__(
            name="Ensure storage accepts TLS 1.2+ over HTTPS only, with no public blob access and no shared keys",
            id="CKV_CMKG_4",
            categories=[CheckCategories.GENERAL_SECURITY],
            supported_resources=["Microsoft.Storage/storageAccounts"],
        )

    def scan_resource_conf(self, conf):
        props = _get(conf, "properties")
        if not isinstance(props, dict):
            return CheckResult.FAILED
        ok = (
            str(props.get("minimumTlsVersion", "")).upper() in ("TLS1_2", "TLS1_3")
            and _is_false(props.get("allowBlobPublicAccess"))
            and _is_false(props.get("allowSharedKeyAccess"))
            and not _is_false(props.get("supportsHttpsTrafficOnly", True))
        )
        return CheckResult.PASSED if ok else CheckResult.FAILED


class FunctionAppHardening(BaseResourceCheck):
    def __init__(self) -> None:
        super().__init__(
            name="Ensure the function app is HTTPS-only with TLS 1.2+, no FTP, no remote debugging, "
                 "and resolves Key Vault references with its user-assigned identity",
            id="CKV_CMKG_5",
            categories=[CheckCategories.GENERAL_SECURITY],
            supported_resources=["Microsoft.Web/sites"],
        )

    def scan_resource_conf(self, conf):
        props = _get(conf, "properties")
        site_config = _get(props, "siteConfig")
        identity_type = str(_get(conf, "identity", "type") or "")
        kv_identity = _get(props, "keyVaultReferenceIdentity")
        ok = (
            isinstance(props, dict) and isinstance(site_config, dict)
            and _is_true(props.get("httpsOnly"))
            and str(site_config.get("ftpsState", "")).lower() == "disabled"
            and str(site_config.get("minTlsVersion", "")) in ("1.2", "1.3")
            and not _is_true(site_config.get("remoteDebuggingEnabled"))
            and "userassigned" in identity_type.replace(" ", "").lower()
            and bool(kv_identity) and str(kv_identity).lower() != "systemassigned"
        )
        return CheckResult.PASSED if ok else CheckResult.FAILED


class KeyVaultFitForRegistryKeys(BaseResourceCheck):
    def __init__(self) -> None:
        super().__init__(
            name="Ensure a key vault keeps soft delete and purge protection on and uses Azure RBAC",
            id="CKV_CMKG_6",
            categories=[CheckCategories.BACKUP_AND_RECOVERY],
            supported_resources=["Microsoft.KeyVault/vaults"],
        )

    def scan_resource_conf(self, conf):
        props = _get(conf, "properties")
        if not isinstance(props, dict):
            return CheckResult.FAILED
        ok = (
            not _is_false(props.get("enableSoftDelete", True))
            and _is_true(props.get("enablePurgeProtection"))
            and _is_true(props.get("enableRbacAuthorization"))
        )
        return CheckResult.PASSED if ok else CheckResult.FAILED


# A key id with a 32-hex version segment pins the registry to one key version.
VERSIONED_KEY_ID = re.compile(r"/keys/[^/]+/[0-9a-fA-F]{32}/?$")


class RegistryCmkRotatable(BaseResourceCheck):
    def __init__(self) -> None:
        super().__init__(
            name="Ensure a registry's customer-managed key uses a user-assigned identity and a versionless key id",
            id="CKV_CMKG_7",
            categories=[CheckCategories.ENCRYPTION],
            supported_resources=["Microsoft.ContainerRegistry/registries"],
        )

    def scan_resource_conf(self, conf):
        kv = _get(conf, "properties", "encryption", "keyVaultProperties")
        identity_type = str(_get(conf, "identity", "type") or "")
        if not isinstance(kv, dict):
            return CheckResult.FAILED
        key_id = str(kv.get("keyIdentifier") or "")
        ok = (
            bool(key_id) and not VERSIONED_KEY_ID.search(key_id)
            and "keyUriWithVersion" not in key_id
            and bool(kv.get("identity"))
            and "userassigned" in identity_type.replace(" ", "").lower()
        )
        return CheckResult.PASSED if ok else CheckResult.FAILED


checks = [
    EventSubscriptionDeadLetter(),
    EventSubscriptionRetryPolicy(),
    EventSubscriptionTargetsShippedFunction(),
    StorageHardening(),
    FunctionAppHardening(),
    KeyVaultFitForRegistryKeys(),
    RegistryCmkRotatable(),
]
