"""The Plex settings the CDN needs: which ones, why never allowedNetworks, and the scripts that apply and read
them, run for real against the Plex stand-in on loopback."""

from __future__ import annotations

import ipaddress
import json
import random
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from labs.plex_standin import BackgroundOrigin, OriginSettings, make_media_file
from plexcdn import plex_settings
from plexcdn.config import ConfigError, StackConfig, parse_config
from plexcdn.render import placeholder_addresses, render_template
from tests.conftest import HOME_HOST_KEY, example_values, five_pop_values, wireguard_values

TOKEN = "PlexOwnerToken-7f3a9c2b1d"  # the stand-in's owner token, made up for the tests
TOOLS = ("bash", "curl", "strace", "shellcheck")

needs_tools = pytest.mark.skipif(any(shutil.which(tool) is None for tool in TOOLS), reason=f"needs {', '.join(TOOLS)}")


def agent_values(**plex: Any) -> dict[str, Any]:
    values = example_values()
    values["origin"]["agent"] = {"listenPort": 32443, "sshHost": "192.168.1.10", "sshHostKey": HOME_HOST_KEY}
    if plex:
        values["plex"] = plex
    return values


# --- which settings --------------------------------------------------------------------------------------------


def test_the_settings_and_their_values() -> None:
    config = parse_config(agent_values(lanNetworks=["192.168.1.0/24", "fd00:1::/64"]), "dev")
    prefs = {pref.id: pref for pref in plex_settings.desired_prefs(config)}
    assert prefs["customConnections"].value == "https://plex.example.com:443", "the port written out"
    assert prefs["secureConnections"].value == "1" and prefs["secureConnections"].shown == "Preferred"
    assert prefs["PublishServerOnPlexOnlineKey"].value == "false"
    assert prefs["RelayEnabled"].value == "false"
    assert prefs["LanNetworksBandwidth"].value == "192.168.1.0/24,fd00:1::/64"
    assert all(pref.why and pref.label and pref.place for pref in prefs.values())
    opened = parse_config(agent_values(remoteAccess=True, relay=True), "dev")
    values = {pref.id: pref.value for pref in plex_settings.desired_prefs(opened)}
    assert values["PublishServerOnPlexOnlineKey"] == "true" and values["RelayEnabled"] == "true"
    assert "LanNetworksBandwidth" not in values, "left to Plex unless lanNetworks is given"


def _configs() -> Iterator[StackConfig]:
    for values in (example_values(), five_pop_values(), wireguard_values(), agent_values()):
        yield parse_config(values, "dev")
    yield parse_config(agent_values(lanNetworks=["10.0.0.0/8", "192.168.0.0/16", "fc00::/7"]), "dev")
    wireguard = wireguard_values()
    wireguard["plex"] = {"lanNetworks": ["192.168.0.0/16"], "remoteAccess": True}
    yield parse_config(wireguard, "dev")


@pytest.mark.parametrize("config", list(_configs()), ids=lambda c: f"{c.origin.link}-{len(c.pops)}-{c.plex}")
def test_no_pop_or_tunnel_address_ever_lands_in_a_setting_that_skips_or_lifts_limits(config: StackConfig) -> None:
    prefs = plex_settings.desired_prefs(config)
    assert not {pref.id.lower() for pref in prefs} & {"allowednetworks"}, "allowedNetworks is never set"
    cdn = [
        ipaddress.ip_address(source.address)
        for source in plex_settings.cdn_sources(config, placeholder_addresses(config).items())
    ]
    assert cdn, "the addresses the CDN reaches Plex from"
    for pref in prefs:
        if pref.id != "LanNetworksBandwidth":
            continue
        for network in pref.value.split(","):
            assert not any(address in ipaddress.ip_network(network) for address in cdn), (network, cdn)


def test_lan_networks_must_be_home_networks_apart_from_the_tunnels() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(agent_values(lanNetworks=["192.168.1.0/24", "203.0.113.0/24", "127.0.0.0/8"]), "dev")
    problems = caught.value.problems
    assert any(p.startswith("plex.lanNetworks[1]:") and "not a private network" in p for p in problems)
    assert any(p.startswith("plex.lanNetworks[2]:") for p in problems), "loopback is where the agent proxies from"
    wireguard = wireguard_values()
    wireguard["plex"] = {"lanNetworks": ["10.0.0.0/8"]}
    with pytest.raises(ConfigError) as caught:
        parse_config(wireguard, "dev")
    assert any("overlaps origin.tunnelSubnet" in p for p in caught.value.problems)


def test_who_applies_the_settings() -> None:
    assert plex_settings.applier(parse_config(agent_values(), "dev"), False) == "plex-host"
    assert plex_settings.applier(parse_config(agent_values(applySettings=False), "dev"), True) == "none"
    assert plex_settings.applier(parse_config(example_values(), "dev"), False) == "none"
    assert plex_settings.applier(parse_config(example_values(), "dev"), True) == "hub", "verifyName is set"
    assert plex_settings.applier(parse_config(wireguard_values(), "dev"), True) == "hub"
    unverified = example_values()
    del unverified["origin"]["verifyName"]
    config = parse_config(unverified, "dev")
    assert plex_settings.applier(config, True) == "none", "the token never crosses an unverified hop"
    assert any("not verified" in w for w in plex_settings.applier_warnings(config, True))
    endpoint = plex_settings.hub_endpoint(parse_config(example_values(), "dev"))
    assert endpoint == plex_settings.PlexEndpoint("https://home.example.net:32400")
    assert plex_settings.hub_endpoint(parse_config(wireguard_values(), "dev")) == plex_settings.PlexEndpoint(
        "http://10.77.0.2:32400"
    )


def test_the_text_for_people_names_each_setting_and_never_allowed_networks_as_a_value() -> None:
    config = parse_config(example_values(), "dev")
    text = plex_settings.settings_text(config, "none")
    assert "Custom server access URLs: https://plex.example.com:443" in text
    assert "set these in Plex yourself" in text
    assert "allowedNetworks=" not in text
    document = json.loads(plex_settings.settings_json(config, "none"))
    assert [s["id"] for s in document["settings"]][:2] == ["customConnections", "secureConnections"]


# --- the scripts, checked by the shell's own tools ----------------------------------------------------------------


def _all_scripts() -> Iterator[tuple[str, str]]:
    for config in _configs():
        sources = plex_settings.cdn_sources(config, placeholder_addresses(config).items())
        yield "local", plex_settings.apply_script(config, plex_settings.local_endpoint(config), sources)
        hub = plex_settings.hub_endpoint(config)
        if hub is not None:
            yield "hub", plex_settings.apply_script(config, hub, sources, token_from_stdin=True)
        yield "restore", plex_settings.restore_script(config, plex_settings.local_endpoint(config))
        yield "sessions", plex_settings.sessions_script(config)


@needs_tools
def test_every_rendered_script_passes_bash_n_and_shellcheck(tmp_path: Path) -> None:
    scripts = list(_all_scripts())
    assert {kind for kind, _ in scripts} == {"local", "hub", "restore", "sessions"}
    for index, (kind, script) in enumerate(scripts):
        path = tmp_path / f"{kind}-{index}.sh"
        path.write_text(script)
        assert subprocess.run(["bash", "-n", str(path)], capture_output=True, check=False).returncode == 0, kind
        checked = subprocess.run(["shellcheck", "-s", "bash", str(path)], capture_output=True, text=True, check=False)
        assert checked.returncode == 0, checked.stdout


@needs_tools
def test_the_network_test_agrees_with_pythons_ipaddress(tmp_path: Path) -> None:
    """plexcdn_network_holds against the ipaddress module on random networks and addresses, both families,
    prefix and netmask forms, and malformed entries."""
    chooser = random.Random(20260801)
    cases: list[tuple[str, str, int]] = []
    for _ in range(300):
        version = chooser.choice((4, 6))
        bits = 32 if version == 4 else 128
        family = ipaddress.IPv4Address if version == 4 else ipaddress.IPv6Address
        base = family(chooser.getrandbits(bits))
        prefix = chooser.randint(0, bits)
        network = ipaddress.ip_network(f"{base}/{prefix}", strict=False)
        inside = network.network_address + chooser.randrange(network.num_addresses)
        outside = family(chooser.getrandbits(bits))
        written = f"{base}/{prefix}"
        if version == 4 and chooser.random() < 0.3:
            written = f"{base}/{network.netmask}"
        for address in (inside, outside):
            cases.append((written, str(address), 0 if address in network else 1))
        other = "2001:db8::1" if version == 4 else "192.0.2.1"
        cases.append((written, other, 1))
    cases += [
        ("192.168.1.7", "192.168.1.7", 0),
        ("192.168.1.7", "192.168.1.8", 1),
        ("::1", "::1", 0),
        ("fe80::/10", "fe80::1:2", 0),
        ("1::", "1:0:0:0:0:0:0:0", 0),
        ("300.1.1.1/8", "1.1.1.1", 2),
        ("10.0.0.0/33", "10.0.0.1", 2),
        ("1:2:3:4:5:6:7:8:", "1:2:3:4:5:6:7:8", 2),
        ("1::2::3", "1::3", 2),
        ("example.com", "10.0.0.1", 2),
        ("", "10.0.0.1", 2),
    ]
    driver = [render_template("plex/_network.sh")]
    driver += [f"plexcdn_network_holds '{n}' '{a}' && echo 0 || echo $?" for n, a, _ in cases]
    path = tmp_path / "driver.sh"
    path.write_text("\n".join(driver) + "\n")
    result = subprocess.run(["bash", str(path)], capture_output=True, text=True, check=True, timeout=60)
    got = [int(line) for line in result.stdout.split()]
    mismatches = [(case, code) for case, code in zip(cases, got, strict=True) if case[2] != code]
    assert not mismatches, mismatches[:5]


# --- run for real against the stand-in --------------------------------------------------------------------------


def _preferences_xml(token: str) -> str:
    return (
        '<?xml version="1.0" encoding="utf-8"?>\n'
        f'<Preferences MachineIdentifier="lab" AcceptedEULA="1" PlexOnlineToken="{token}" '
        'PlexOnlineUsername="lab-owner" FriendlyName="lab"/>\n'
    )


class Host:
    """A Plex host on loopback: the stand-in, its Preferences.xml, and a stack whose origin is it."""

    def __init__(self, root: Path, origin: BackgroundOrigin, token: str = TOKEN, **plex: Any) -> None:
        self.root = root
        self.origin = origin
        self.app_data = root / "Plex Media Server"
        self.app_data.mkdir(parents=True, exist_ok=True)
        (self.app_data / "Preferences.xml").write_text(_preferences_xml(token))
        values = agent_values(appDataDir=str(self.app_data), **plex)
        values["origin"]["port"] = origin.port
        self.config = parse_config(values, "dev")
        self.sources = plex_settings.cdn_sources(self.config, [("us", "203.0.113.10"), ("us", "2001:db8::10")])
        self.previous = root / "state" / "plex-settings.previous"

    def run(self, script: str, stdin: str = "") -> tuple[subprocess.CompletedProcess[str], str]:
        """Run `script` as pulumi-command does (`bash -c SCRIPT`) under strace, which records every program it
        starts with its arguments and environment."""
        trace = self.root / "trace.txt"
        result = subprocess.run(
            ["strace", "-f", "-qq", "-v", "-s", "100000", "-e", "trace=execve", "-o", str(trace), "bash", "-c", script],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        return result, trace.read_text()

    def apply(self) -> tuple[subprocess.CompletedProcess[str], str]:
        endpoint = plex_settings.local_endpoint(self.config)
        return self.run(
            plex_settings.apply_script(self.config, endpoint, self.sources, previous_file=str(self.previous))
        )

    def restore(self) -> tuple[subprocess.CompletedProcess[str], str]:
        endpoint = plex_settings.local_endpoint(self.config)
        return self.run(plex_settings.restore_script(self.config, endpoint, previous_file=str(self.previous)))


@pytest.fixture
def media(tmp_path: Path) -> Path:
    path = tmp_path / "media.mkv"
    make_media_file(path, 4096)
    return path


def _origin(media: Path, tmp_path: Path, **settings: Any) -> BackgroundOrigin:
    return BackgroundOrigin(
        OriginSettings(media=media, headers_log=tmp_path / "headers.jsonl", token=TOKEN, **settings)
    )


def _requests(tmp_path: Path) -> list[str]:
    return [json.loads(line)["path"] for line in (tmp_path / "headers.jsonl").read_text().splitlines()]


@needs_tools
def test_the_settings_are_applied_read_back_and_the_token_stays_put(tmp_path: Path, media: Path) -> None:
    with _origin(media, tmp_path) as origin:
        host = Host(tmp_path, origin, lanNetworks=["192.168.1.0/24"])
        result, trace = host.apply()
        assert result.returncode == 0, result.stdout + result.stderr
        assert origin.prefs.get("customConnections") == "https://plex.example.com:443"
        assert origin.prefs.get("secureConnections") == "1"
        assert origin.prefs.get("PublishServerOnPlexOnlineKey") == "0"
        assert origin.prefs.get("RelayEnabled") == "0"
        assert origin.prefs.get("LanNetworksBandwidth") == "192.168.1.0/24"
        lines = result.stdout.splitlines()
        assert "plex-cdn: Custom server access URLs (customConnections) = https://plex.example.com:443: set" in lines
        assert "plex-cdn: Secure connections (secureConnections) = 1: already set" in lines, "Plex's default"
        assert lines[-1] == "plex-cdn: the Plex settings the CDN needs are in place"
        again, _ = host.apply()
        assert again.returncode == 0
        assert sum(line.endswith(": already set") for line in again.stdout.splitlines()) == 5
    # The token went to Plex, and nowhere else: not to the output, not into any program's arguments or environment.
    assert any(TOKEN in json.dumps(record) for record in map(json.loads, (tmp_path / "headers.jsonl").open()))
    assert TOKEN not in result.stdout + result.stderr + again.stdout + again.stderr
    assert "execve(" in trace and "curl" in trace, "strace saw the programs the script ran"
    assert TOKEN not in trace
    assert not any("allowedNetworks" in path for path in _requests(tmp_path) if "=" in path.partition("?")[2])


@needs_tools
def test_a_setting_plex_refuses_is_reported_and_fails_the_run(tmp_path: Path, media: Path) -> None:
    with _origin(media, tmp_path, refused_prefs=frozenset({"RelayEnabled"})) as origin:
        host = Host(tmp_path, origin)
        result, _ = host.apply()
        assert result.returncode == 1
        assert (
            'plex-cdn: Enable Relay (RelayEnabled) = false: NOT SET: Plex refused it (HTTP 400) and keeps "true"'
            in (result.stdout.splitlines())
        )
        assert "1 of the Plex settings the CDN needs are not in place" in result.stderr
        assert origin.prefs.get("RelayEnabled") == "1"
        assert origin.prefs.get("customConnections") == "https://plex.example.com:443", "the others still apply"


@needs_tools
def test_allowed_networks_admitting_the_cdn_is_reported_and_never_written(tmp_path: Path, media: Path) -> None:
    initial = (("allowedNetworks", "192.168.1.0/255.255.255.0,127.0.0.1/8,2001:db8::/32"),)
    with _origin(media, tmp_path, initial_prefs=initial) as origin:
        host = Host(tmp_path, origin)
        result, _ = host.apply()
        assert result.returncode == 1
        flagged = [line for line in result.stdout.splitlines() if "allowedNetworks holds" in line]
        assert len(flagged) == 2, flagged
        assert "holds 127.0.0.1/8, so requests from 127.0.0.1 (the origin agent) skip Plex's sign-in" in flagged[0]
        assert "holds 2001:db8::/32, so requests from 2001:db8::10 (POP us)" in flagged[1]
        assert origin.prefs.get("allowedNetworks") == initial[0][1], "read, never written"
        assert "allowedNetworks" not in origin.prefs.puts


@needs_tools
def test_a_wrong_token_changes_nothing(tmp_path: Path, media: Path) -> None:
    with _origin(media, tmp_path) as origin:
        host = Host(tmp_path, origin, token="not-the-owners-token")
        result, _ = host.apply()
        assert result.returncode == 1
        assert "answered /:/prefs with HTTP 401; nothing was changed" in result.stderr
        assert origin.prefs.puts == []


@needs_tools
def test_a_host_without_a_token_says_so(tmp_path: Path, media: Path) -> None:
    with _origin(media, tmp_path) as origin:
        host = Host(tmp_path, origin)
        (host.app_data / "Preferences.xml").write_text('<Preferences AcceptedEULA="1"/>\n')
        result, _ = host.apply()
        assert result.returncode == 1 and "holds no PlexOnlineToken" in result.stderr


@needs_tools
def test_the_token_from_stdin_as_the_hub_applies_it(tmp_path: Path, media: Path) -> None:
    with _origin(media, tmp_path) as origin:
        host = Host(tmp_path, origin)
        endpoint = plex_settings.PlexEndpoint(
            f"http://plex.invalid:{origin.port}",
            ("--connect-to", f"plex.invalid:{origin.port}:127.0.0.1:{origin.port}"),
        )
        script = plex_settings.apply_script(
            host.config, endpoint, host.sources, token_from_stdin=True, previous_file=str(host.previous)
        )
        assert "Preferences.xml" not in script
        result, trace = host.run(script, stdin=TOKEN + "\n")
        assert result.returncode == 0, result.stdout + result.stderr
        assert origin.prefs.get("customConnections") == "https://plex.example.com:443"
        assert TOKEN not in result.stdout + result.stderr + trace


@needs_tools
def test_the_sessions_script_prints_plexs_sessions_without_tokens(tmp_path: Path, media: Path) -> None:
    with _origin(media, tmp_path) as origin:
        host = Host(tmp_path, origin)
        request = subprocess.run(
            [
                "curl",
                "-sS",
                "-X",
                "POST",
                "--data",
                json.dumps([{"clientId": "tv-1", "address": "192.168.1.50", "product": f"x?X-Plex-Token={TOKEN}"}]),
                f"{origin.url}/lab/sessions",
            ],
            capture_output=True,
            check=True,
        )
        assert request.returncode == 0
        result, trace = host.run(plex_settings.sessions_script(host.config))
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    (session,) = document["MediaContainer"]["Metadata"]
    assert session["Player"]["machineIdentifier"] == "tv-1"
    assert TOKEN not in result.stdout + result.stderr + trace
    assert "X-Plex-Token=REDACTED" in session["Player"]["product"]


@needs_tools
def test_destroy_puts_back_what_plex_had_before_the_first_change(tmp_path: Path, media: Path) -> None:
    initial = (("customConnections", "https://home.example.net:32400"), ("RelayEnabled", "1"))
    with _origin(media, tmp_path, initial_prefs=initial) as origin:
        host = Host(tmp_path, origin)
        assert host.apply()[0].returncode == 0
        assert host.apply()[0].returncode == 0, "a second run keeps the first run's record"
        assert origin.prefs.get("customConnections") == "https://plex.example.com:443"
        restored, trace = host.restore()
        assert restored.returncode == 0, restored.stderr
        assert origin.prefs.get("customConnections") == "https://home.example.net:32400"
        assert origin.prefs.get("RelayEnabled") == "1"
        assert origin.prefs.get("PublishServerOnPlexOnlineKey") == "0", "Plex's own default, as it was"
        assert not host.previous.exists()
        assert TOKEN not in restored.stdout + restored.stderr + trace
    nothing, _ = host.restore()
    assert nothing.returncode == 0 and "no Plex settings to put back" in nothing.stdout
