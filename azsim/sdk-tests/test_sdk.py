"""Microsoft's official Python SDK clients against azsim: a real client must accept it.

Starts the azsim binary on the demo scenario, resolves *.azsim.test to 127.0.0.1 inside
this process only (socket.getaddrinfo is patched; /etc/hosts is never touched), trusts
azsim's CA explicitly, and authenticates with ManagedIdentityCredential through the
App Service variables IDENTITY_ENDPOINT / IDENTITY_HEADER pointing at azsim.
Where the SDK and azsim disagree, azsim is wrong.
"""

import json
import os
import pathlib
import socket
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
SCENARIO = ROOT / "azsim" / "scenarios" / "demo.json"
SUB = "0b1f6471-1bf0-4dda-aec3-cb9272f09590"
RG = "rg-registries"
ACR_IDENTITY_CLIENT_ID = "33b5bfe1-ff99-42ec-a264-a19d6bf8e4f7"
CALLER_CLIENT_ID = "6f1c2a0e-5b8d-4c55-9d3e-1a2b3c4d5e6f"

_real_getaddrinfo = socket.getaddrinfo


def _loopback_getaddrinfo(host, port, *args, **kwargs):
    if isinstance(host, str) and host.lower().rstrip(".").endswith(".azsim.test"):
        host = "127.0.0.1"
    return _real_getaddrinfo(host, port, *args, **kwargs)


@pytest.fixture(scope="module")
def azsim(tmp_path_factory):
    binary = os.environ.get("AZSIM_BIN", str(ROOT / "target" / "release" / "azsim"))
    if not os.path.exists(binary):
        pytest.fail(f"{binary} is missing: build it with `cargo build --release -p azsim`")
    ca = tmp_path_factory.mktemp("azsim") / "ca.pem"
    proc = subprocess.Popen(
        [binary, "--scenario", str(SCENARIO), "--write-ca", str(ca), "--lro-polls", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        if not line:
            pytest.fail(f"azsim did not start: {proc.stderr.read()}")
        endpoints = json.loads(line)
        endpoints["ca"] = str(ca)
        socket.getaddrinfo = _loopback_getaddrinfo
        saved = {k: os.environ.get(k) for k in ("IDENTITY_ENDPOINT", "IDENTITY_HEADER")}
        os.environ["IDENTITY_ENDPOINT"] = endpoints["identityEndpoint"]
        os.environ["IDENTITY_HEADER"] = endpoints["identityHeader"]
        yield endpoints
    finally:
        socket.getaddrinfo = _real_getaddrinfo
        for k, v in locals().get("saved", {}).items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="module")
def credential(azsim):
    from azure.identity import ManagedIdentityCredential

    return ManagedIdentityCredential(client_id=CALLER_CLIENT_ID)


@pytest.fixture(scope="module")
def acr(azsim, credential):
    from azure.mgmt.containerregistry import ContainerRegistryManagementClient

    return ContainerRegistryManagementClient(
        credential,
        SUB,
        base_url=azsim["armEndpoint"],
        credential_scopes=[azsim["armAudience"] + "/.default"],
        connection_verify=azsim["ca"],
    )


def key_client(azsim, credential, vault="kv-demo"):
    from azure.keyvault.keys import KeyClient

    url = f"https://{vault}.{azsim['vaultSuffix']}:{azsim['port']}/"
    return KeyClient(url, credential, connection_verify=azsim["ca"])


def test_token_from_managed_identity(azsim, credential):
    token = credential.get_token(azsim["armAudience"] + "/.default")
    assert token.token.startswith("azsim.")
    assert token.expires_on > 0


def test_get_registry(acr):
    reg = acr.registries.get(RG, "acrpinned")
    assert reg.name == "acrpinned"
    assert reg.sku.name == "Premium"
    assert reg.provisioning_state == "Succeeded"
    assert reg.identity.type.lower() == "userassigned"
    kvp = reg.encryption.key_vault_properties
    assert reg.encryption.status == "enabled"
    assert "/keys/cmk-pinned/" in kvp.key_identifier
    assert kvp.versioned_key_identifier == kvp.key_identifier
    assert kvp.identity == ACR_IDENTITY_CLIENT_ID
    assert kvp.key_rotation_enabled is False
    plain = acr.registries.get(RG, "acrnocmk")
    assert plain.encryption.status == "disabled"


def test_list_registries(acr):
    names = sorted(r.name for r in acr.registries.list_by_resource_group(RG))
    assert names == ["acrauto", "acrexpiring", "acrnocmk", "acrpinned", "acrweakvault"]


def test_update_registry_encryption_key_with_lro(azsim, acr, credential):
    from azure.mgmt.containerregistry.models import EncryptionProperty, KeyVaultProperties, RegistryUpdateParameters

    before = acr.registries.get(RG, "acrpinned")
    kc = key_client(azsim, credential)
    latest = kc.get_key("cmk-pinned")
    assert latest.id != before.encryption.key_vault_properties.key_identifier
    params = RegistryUpdateParameters(
        identity=before.identity,
        encryption=EncryptionProperty(
            status="enabled",
            key_vault_properties=KeyVaultProperties(key_identifier=latest.id, identity=ACR_IDENTITY_CLIENT_ID),
        ),
    )
    poller = acr.registries.begin_update(RG, "acrpinned", params, polling_interval=0)
    result = poller.result(timeout=30)
    assert poller.status().lower() == "succeeded"
    assert result.provisioning_state == "Succeeded"
    kvp = result.encryption.key_vault_properties
    assert kvp.key_identifier == latest.id
    assert kvp.versioned_key_identifier == latest.id
    assert kvp.last_key_rotation_timestamp is not None
    again = acr.registries.get(RG, "acrpinned")
    assert again.encryption.key_vault_properties.key_identifier == latest.id


def test_update_to_disabled_key_is_rejected(azsim, acr, credential):
    from azure.core.exceptions import HttpResponseError
    from azure.mgmt.containerregistry.models import EncryptionProperty, KeyVaultProperties, RegistryUpdateParameters

    kc = key_client(azsim, credential)
    disabled = kc.get_key("cmk-disabled")
    params = RegistryUpdateParameters(
        encryption=EncryptionProperty(
            status="enabled",
            key_vault_properties=KeyVaultProperties(key_identifier=disabled.id, identity=ACR_IDENTITY_CLIENT_ID),
        ),
    )
    with pytest.raises(HttpResponseError) as err:
        acr.registries.begin_update(RG, "acrexpiring", params, polling_interval=0).result(timeout=30)
    assert err.value.status_code == 400
    assert err.value.error.code == "KeyVaultKeyDisabled"


def test_get_key_list_versions_rotate(azsim, acr, credential):
    kc = key_client(azsim, credential)
    key = kc.get_key("cmk-pinned")
    assert key.key_type == "RSA"
    assert key.properties.enabled is True
    assert key.properties.recovery_level == "Recoverable"
    assert key.key.n and key.key.e
    older = kc.get_key("cmk-pinned", version="482c3c34119042a9b7c998c0f70ea0a1")
    assert older.properties.version == "482c3c34119042a9b7c998c0f70ea0a1"

    versions = list(kc.list_properties_of_key_versions("cmk-pinned", max_page_size=1))
    assert sorted(v.version for v in versions) == sorted(["482c3c34119042a9b7c998c0f70ea0a1", "2684b6e3103747e3aad82a27baa3abb1"])

    before = acr.registries.get(RG, "acrauto").encryption.key_vault_properties.versioned_key_identifier
    rotated = kc.rotate_key("cmk-auto")
    assert rotated.id != before
    assert rotated.key_type == "RSA-HSM"
    assert rotated.properties.expires_on is not None
    after = acr.registries.get(RG, "acrauto").encryption.key_vault_properties
    assert after.versioned_key_identifier == rotated.id, "a versionless registry follows the new version"

    policy = kc.get_key_rotation_policy("cmk-auto")
    assert policy.expires_in == "P2Y"
    assert any(a.action.lower() == "rotate" for a in policy.lifetime_actions)
