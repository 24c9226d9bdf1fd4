"""`edgeward serve <service> --config-dir`: each service reads only the file `config apply` wrote for it, and that
file holds everything the service needs of the others (their endpoints, keyd's identity principals, edged's
[edgeward.peers]); the result is the same service as `serve <service> -c <super config>` runs."""

from __future__ import annotations

import asyncio
import textwrap
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgeward.cli.main import cli
from edgeward.config.problems import ConfigError, Problems
from edgeward.config.super_config import SERVICE_FILES, split_super_config
from edgeward.daemon import ALL_SERVICES, load_service_settings, load_settings, read_config
from edgeward.http.peercred import Caller
from edgeward.identity.settings import DpsProvisioning
from edgeward.keys.compose import build_key_service
from edgeward.keys.errors import NotAuthorized
from edgeward.keys.model import HmacSha256
from edgeward.keys.principals import KeyPrincipal
from edgeward.runtime.privileges import ElevatedOptionRefused, policy_for, vet_create_options

GOLDEN = Path(__file__).resolve().parent.parent / "golden" / "config"
CASES = sorted(d.name for d in GOLDEN.iterdir() if (d / "config.toml").is_file())
SERVICES = {name: service for service, name in SERVICE_FILES.items()}


def write_split(config: Path, out: Path) -> None:
    """What `config apply -c config --out-dir out` writes (ownership aside)."""
    split = split_super_config(read_config(config), Problems(), config_files=(config.resolve(), out.resolve()))
    out.mkdir(parents=True, exist_ok=True)
    for name, text in split.render(config.name).items():
        (out / name).write_text(text)


@pytest.mark.parametrize("case", CASES)
def test_each_service_reads_from_its_own_file_what_it_reads_from_the_super_config(case: str,
                                                                                   tmp_path: Path) -> None:
    config = GOLDEN / case / "config.toml"
    state, run, out = tmp_path / "state", tmp_path / "run", tmp_path / "etc"
    whole = load_settings(config, state, run)
    # the runtime's view of its peers ([edgeward.peers]) is what the identity and TPM settings say
    prov = whole.identity.provisioning
    assert whole.runtime.cloud_provisioning == (None if prov is None else "dps" if isinstance(prov, DpsProvisioning)
                                                else "manual")
    assert whole.runtime.tpm_service == (whole.tpm is not None)
    write_split(config, out)
    for name in (p.name for p in out.iterdir()):
        service = SERVICES[name]
        alone = load_service_settings(service, out, state, run)
        # where the services it calls listen: what this service's file says of them; of the others, nothing
        assert (alone.certs is not None) == (service in ("certs", "identity", "edged")), name
        assert (alone.identity is not None) == (service in ("identity", "edged")), name
        assert (alone.runtime is not None) == (service == "edged"), name
        assert alone.keys.socket_path == whole.keys.socket_path, name
        if alone.certs is not None:
            assert alone.certs.socket_path == whole.certs.socket_path, name
        if alone.identity is not None:
            assert alone.identity.socket_path == whole.identity.socket_path, name
            assert alone.identity.tpmd_socket == whole.identity.tpmd_socket, name
        if service == "keys":
            assert alone.keys == whole.keys
            wanted = {p.uid for p in whole.keys.principals} | {p.uid for p in whole.identity.principals}
            assert {p.uid for p in alone.keys.principals} == wanted  # what the keys guard admits
            assert alone.max_requests == {k: v for k, v in whole.max_requests.items() if k == "keyd"}
        elif service == "certs":
            assert alone.certs == whole.certs
            assert alone.max_requests == {k: v for k, v in whole.max_requests.items() if k == "certd"}
        elif service == "identity":
            assert alone.identity == whole.identity
        elif service == "tpm":
            assert alone.tpm == whole.tpm
        else:
            assert alone.runtime is not None
            assert replace(alone.runtime, protected_paths=()) == replace(whole.runtime, protected_paths=())
            assert (alone.tpm is None) == (whole.tpm is None)
            if whole.tpm is not None:
                assert alone.tpm is not None and alone.tpm.socket_path == whole.tpm.socket_path
            # every path `-c` protects is protected here too (state and run dirs: by the policy itself)
            kept = set(alone.runtime.protected_paths)
            for path in whole.runtime.protected_paths:
                assert path in kept or path.is_relative_to(state) or path.is_relative_to(run), path
            assert {config.resolve(), out.resolve(), (out / "edged.toml").resolve()} <= kept


def test_endpoints_reach_every_caller_and_the_tpm_table_wins(tmp_path: Path) -> None:
    doc = {"endpoints": {"aziot_keyd": "unix:///s/k.sock", "aziot_certd": "unix:///s/c.sock",
                         "aziot_identityd": "unix:///s/i.sock", "aziot_tpmd": "unix:///s/shared-tpm.sock"},
           "tpm": {"endpoints": {"aziot_tpmd": "unix:///s/own-tpm.sock"}}}
    split = split_super_config(doc, Problems())
    assert split.keyd["endpoints"] == {"aziot_keyd": "unix:///s/k.sock"}  # keyd calls nobody
    assert split.certd["endpoints"] == {"aziot_keyd": "unix:///s/k.sock", "aziot_certd": "unix:///s/c.sock"}
    for doc_ in (split.identityd, split.edged):
        assert doc_["endpoints"] == {"aziot_keyd": "unix:///s/k.sock", "aziot_certd": "unix:///s/c.sock",
                                     "aziot_identityd": "unix:///s/i.sock", "aziot_tpmd": "unix:///s/own-tpm.sock"}
    assert split.tpmd == {"endpoints": {"aziot_tpmd": "unix:///s/own-tpm.sock"}}
    peers = split.edged["edgeward"]["peers"]
    assert peers["tpm"] is True and peers["provisioning"] == "none"
    assert set(peers["protected_paths"]) >= {"/s/k.sock", "/s/c.sock", "/s/i.sock", "/s/own-tpm.sock"}


def test_identity_principals_may_connect_to_keyd_and_create_nothing(tmp_path: Path) -> None:
    doc = {"principal": [{"uid": 3001, "name": "agent", "idtype": ["module"]},
                         {"uid": 3002, "name": "signer", "idtype": ["device"], "keys": ["signer-*"]},
                         {"uid": 3001, "name": "agent-2", "idtype": ["local"]},
                         {"uid": 1000, "keys": ["vendor-*"]}]}
    split = split_super_config(doc, Problems())
    assert split.keyd["principal"] == [{"uid": 3002, "keys": ["signer-*"]}, {"uid": 1000, "keys": ["vendor-*"]},
                                       {"uid": 3001, "keys": []}]  # once per uid, never beside its own globs
    out = tmp_path / "etc"
    config = tmp_path / "config.toml"
    config.write_text(textwrap.dedent("""
        [[principal]]
        uid = 3001
        name = "agent"
        idtype = ["module"]
    """))
    write_split(config, out)
    settings = load_service_settings("keys", out, tmp_path / "state", tmp_path / "run")
    assert settings.keys.principals == (KeyPrincipal(3001, ()),)

    async def go() -> None:
        service = build_key_service(settings.keys)
        try:
            handle = await service.for_caller(Caller(1, 0, 0)).create_key_if_not_exists("device-key", "sign")
            agent = service.for_caller(Caller(2, 3001, 3001))
            assert len(await agent.sign(handle, HmacSha256(b"m"))) == 32  # a handle it was given: it signs
            for attempt in (agent.create_key_if_not_exists("mine", "sign"), agent.load_key("device-key")):
                with pytest.raises(NotAuthorized):
                    await attempt
        finally:
            service.close()
            service.executor.shutdown()

    asyncio.run(go())


def test_edged_learns_provisioning_and_tpm_from_its_own_file(tmp_path: Path) -> None:
    key = tmp_path / "device.key"
    key.write_bytes(b"k" * 32)
    config = tmp_path / "config.toml"
    config.write_text(textwrap.dedent(f"""
        [provisioning]
        source = "manual"
        iothub_hostname = "hub.example"
        device_id = "d1"
        [provisioning.authentication]
        method = "sas"
        device_id_pk = {{ uri = "file://{key}" }}
        [tpm]
        tcti = "swtpm:port=1"
        [endpoints]
        aziot_tpmd = "unix://{tmp_path}/tpm/tpmd.sock"
    """))
    out = tmp_path / "etc"
    write_split(config, out)
    settings = load_service_settings("edged", out, tmp_path / "state", tmp_path / "run")
    assert settings.runtime is not None
    assert settings.runtime.cloud_provisioning == "manual"
    assert settings.runtime.tpm_service and settings.tpm is not None
    assert settings.tpm.socket_path == tmp_path / "tpm" / "tpmd.sock"  # the audit log's counter, over its socket
    assert settings.config_path == out / "edged.toml"
    # no module may bind the super config, the per-service files or the files the other services name
    strict = policy_for(settings.runtime, roots=("/",))
    for source in (config, out, out / "keyd.toml", key):
        with pytest.raises(ElevatedOptionRefused, match="configuration, keys or certificates"):
            vet_create_options({"HostConfig": {"Binds": [f"{source}:/x:ro"]}}, strict)
    assert vet_create_options({"HostConfig": {"Binds": [f"{tmp_path}/data:/x"]}}, strict).options


def test_the_runtime_reader_checks_edgeward_peers(tmp_path: Path) -> None:
    out = tmp_path / "etc"
    out.mkdir()
    (out / "edged.toml").write_text('[edgeward.peers]\nprovisioning = "cloud"\ntpm = "yes"\n'
                                    'protected_paths = ["relative/path", "/fine"]\nextra = 1\n')
    with pytest.raises(ConfigError) as raised:
        load_service_settings("edged", out, tmp_path / "state", tmp_path / "run")
    assert raised.value.source == str(out / "edged.toml")
    assert raised.value.problems == [
        "edgeward.peers.provisioning = 'cloud': expected \"dps\", \"manual\" or \"none\"",
        "edgeward.peers.tpm = 'yes': expected true or false",
        "edgeward.peers.protected_paths = ['relative/path']: expected a list of absolute paths"]


def test_peers_in_the_super_config_are_ignored_with_a_warning() -> None:
    problems = Problems()
    split = split_super_config({"edgeward": {"peers": {"provisioning": "dps", "tpm": True}}}, problems)
    assert split.edged["edgeward"]["peers"]["provisioning"] == "none"
    assert split.edged["edgeward"]["peers"]["tpm"] is False
    assert any(w.startswith("edgeward.peers: ignored here") for w in problems.warnings)


@pytest.mark.parametrize("service", ALL_SERVICES)
def test_serve_with_a_missing_file_exits_3_naming_it(service: str, tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["serve", service, "--config-dir", str(tmp_path), "--state-dir",
                                      str(tmp_path / "s"), "--run-dir", str(tmp_path / "r")])
    assert result.exit_code == 3, result.output
    text = " ".join(result.output.split())
    assert f"config file {tmp_path / SERVICE_FILES[service]} does not exist" in text
    assert "config apply" in text


def test_serve_edged_without_peers_exits_3(tmp_path: Path) -> None:
    (tmp_path / "edged.toml").write_text('hostname = "x"\n')
    result = CliRunner().invoke(cli, ["serve", "edged", "--config-dir", str(tmp_path), "--state-dir",
                                      str(tmp_path / "s"), "--run-dir", str(tmp_path / "r")])
    assert result.exit_code == 3, result.output
    assert "edgeward.peers = '<missing>'" in " ".join(result.output.split())


def test_serve_refuses_both_a_super_config_and_a_config_dir(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["serve", "keys", "-c", str(tmp_path / "config.toml"), "--config-dir",
                                      str(tmp_path)])
    assert result.exit_code == 2
    assert "mutually exclusive" in result.output
