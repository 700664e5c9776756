"""A POP's first boot, deploy steps and the hub's origin resolver: checked by shellcheck and systemd-analyze,
and the resolver run for real against files and stand-in nginx commands."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from plexcdn import origin_resolver, render
from plexcdn.config import StackConfig
from tests.conftest import config_from, example_values, five_pop_values, wireguard_values

RESOLVER = Path(render.__file__).with_name("origin_resolver.py")


def pop_scripts(config: StackConfig) -> dict[str, str]:
    """Every shell script a POP runs, by a name for the report."""
    scripts: dict[str, str] = {}
    for pop in config.pops:
        cloud_init_files = {path: text for path, text in render.certbot_files(config, pop.name).items()}
        scripts[f"{pop.name}-issue"] = cloud_init_files["/usr/local/sbin/plexcdn-issue-certificate"]
        scripts[f"{pop.name}-reload-hook"] = cloud_init_files[
            "/etc/letsencrypt/renewal-hooks/deploy/plexcdn-reload-nginx"
        ]
        scripts[f"{pop.name}-first-boot"] = first_boot_of(config, pop.name)
        release = render.pop_release(config, pop.name)
        scripts[f"{pop.name}-deploy"] = "#!/bin/sh\n" + render.deploy_nginx_script(config, pop.name, release)
        scripts[f"{pop.name}-credentials"] = "#!/bin/sh\n" + render.install_credentials_script(
            config, pop.name, "AKIAEXAMPLE"
        )
        scripts[f"{pop.name}-boot-wait"] = "#!/bin/sh\n" + render.wait_for_first_boot_script(config, pop.name)
    if config.origin.link == "wireguard":
        scripts["hub-tunnel"] = "#!/bin/sh\n" + render.deploy_wireguard_script()
        scripts["hub-tunnel-delete"] = "#!/bin/sh\n" + render.remove_wireguard_script()
    return scripts


def first_boot_of(config: StackConfig, pop: str) -> str:
    document = yaml.safe_load(render.cloud_init(config, pop))
    return str(next(entry["content"] for entry in document["write_files"] if entry["path"] == render.FIRST_BOOT_PATH))


@pytest.mark.parametrize("values", [example_values, five_pop_values, wireguard_values], ids=lambda v: v.__name__)
def test_every_pop_script_passes_shellcheck_as_posix_sh(values: object, tmp_path: Path) -> None:
    config = config_from(values())  # type: ignore[operator]
    paths: list[str] = []
    for name, script in pop_scripts(config).items():
        script_path = tmp_path / f"{name}.sh"
        script_path.write_text(script)
        paths.append(str(script_path))
    result = subprocess.run(["shellcheck", "--shell=sh", *paths], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout
    for path in paths:
        assert subprocess.run(["sh", "-n", path], check=False).returncode == 0, path


def test_the_hubs_resolver_certificate_check_and_warm_up_units_pass_systemd_analyze(tmp_path: Path) -> None:
    config = config_from(example_values())
    release = render.pop_release(config, "us")
    assert set(release.units) == set(render.ORIGIN_RESOLVER_UNITS) | set(render.POP_UNITS)
    assert set(release.programs) == {render.ORIGIN_RESOLVER_PROGRAM, render.CERTIFICATE_CHECK_PROGRAM}
    for name, text in release.programs.items():
        program = tmp_path / "usr" / "local" / "sbin" / name
        program.parent.mkdir(parents=True, exist_ok=True)
        program.write_text(text)
        program.chmod(0o755)
    for name, text in release.units.items():
        (tmp_path / name).write_text(text.replace("/usr/local/sbin/", f"{program.parent}/"))
    units = [str(tmp_path / name) for name in sorted(release.units)]
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", *units], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    service = release.units["plexcdn-origin-resolve.service"]
    assert f"--host {config.origin.host} --port {config.origin.port}" in service and "--reload" in service


def test_only_a_hub_that_reaches_the_origin_by_name_gets_the_resolver() -> None:
    config = config_from(example_values())
    every_pops = set(render.POP_UNITS)
    assert set(render.pop_release(config, "asia").units) == every_pops
    by_address = example_values()
    by_address["origin"]["host"] = "203.0.114.50"
    del by_address["origin"]["verifyName"]
    release = render.pop_release(config_from(by_address), "us")
    assert set(release.units) == every_pops and set(release.programs) == {render.CERTIFICATE_CHECK_PROGRAM}
    assert "server 203.0.114.50:32400;" in release.nginx["plexcdn-upstream.conf"]
    assert set(render.pop_release(config_from(wireguard_values()), "us").units) == every_pops


def test_every_pop_checks_its_own_certificate_every_hour() -> None:
    config = config_from(example_values())
    for pop in ("us", "asia"):
        release = render.pop_release(config, pop)
        service = release.units["plexcdn-certificate-check.service"]
        assert f"--certificate /etc/letsencrypt/live/{config.pop_name(pop)}/fullchain.pem" in service
        assert f"--state-dir {render.CERTIFICATE_STATE_DIR} --warn-days 14" in service
        assert "OnUnitActiveSec=1h" in release.units["plexcdn-certificate-check.timer"]
        script = render.deploy_nginx_script(config, pop, release)
        assert "systemctl enable --now plexcdn-certificate-check.timer" in script


def test_every_pop_warms_its_chain_when_nginx_starts_and_after_each_deploy() -> None:
    config = config_from(example_values())
    for pop in ("us", "asia"):
        release = render.pop_release(config, pop)
        unit = release.units[render.WARM_CHAIN_UNIT]
        assert f"http://127.0.0.1{render.WARM_PATH}" in unit and "WantedBy=nginx.service" in unit
        script = render.deploy_nginx_script(config, pop, release)
        live = script.index("now serves release")
        start = script.index(f"systemctl start --no-block {render.WARM_CHAIN_UNIT}")
        assert script.index('until [ "$(curl') < start < live, "after the new workers serve"
        assert f"systemctl enable {render.WARM_CHAIN_UNIT}" in script


def test_the_release_id_covers_the_resolver_and_is_what_nginx_reports() -> None:
    config = config_from(example_values())
    release = render.pop_release(config, "us")
    assert f'default "{release.id}";' in release.nginx[render.RELEASE_FILE]
    without_resolver = render.release_id(release.nginx)
    assert without_resolver != release.id, "the resolver program and units are part of the release"
    assert f'"$(curl -fsS --max-time 2 http://127.0.0.1{render.RELEASE_PATH}' in render.deploy_nginx_script(
        config, "us", release
    )


def test_the_deploy_reads_exactly_the_pops_private_keys_from_stdin() -> None:
    config = config_from(five_pop_values())
    assert render.secret_files(config, "us") == (render.PEER_SERVER_KEY_FILE,)
    assert render.secret_files(config, "asia") == (render.PEER_CLIENT_KEY_FILE, render.PEER_SERVER_KEY_FILE)
    assert render.secret_files(config, "sg") == (render.PEER_CLIENT_KEY_FILE,)
    script = render.deploy_nginx_script(config, "asia", render.pop_release(config, "asia"))
    assert f"/etc/nginx {render.PEER_CLIENT_KEY_FILE} {render.PEER_SERVER_KEY_FILE}" in script


# --- the resolver, run ---------------------------------------------------------------------------------------


def fixed(*addresses: str) -> origin_resolver.Resolver:
    return lambda host, port: list(addresses)


def test_resolve_prefers_ipv4_and_sorts_by_address(monkeypatch: pytest.MonkeyPatch) -> None:
    answers = [
        (socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("2001:db8::1", 32400, 0, 0)),
        (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("203.0.113.9", 32400)),
        (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("203.0.113.10", 32400)),
        (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("203.0.113.9", 32400)),
    ]
    monkeypatch.setattr(socket, "getaddrinfo", lambda *args, **kwargs: answers)
    assert origin_resolver.resolve("home.example.net", 32400) == ["203.0.113.9", "203.0.113.10"]
    monkeypatch.setattr(socket, "getaddrinfo", lambda *args, **kwargs: answers[:1])
    assert origin_resolver.resolve("home.example.net", 32400) == ["2001:db8::1"]


def test_resolve_answers_nothing_for_a_name_that_does_not_resolve() -> None:
    assert origin_resolver.resolve("name.invalid", 32400) == []
    assert origin_resolver.resolve("localhost", 32400) in (["127.0.0.1"], ["::1"])


def update(servers: Path, resolver: origin_resolver.Resolver, test: list[str], reload: list[str]) -> tuple[int, str]:
    return origin_resolver.update(
        "home.example.net", 32400, str(servers), reload=True, resolver=resolver, nginx_test=test, nginx_reload=reload
    )


def test_a_new_address_is_written_tested_and_reloaded(tmp_path: Path) -> None:
    servers = tmp_path / "servers.conf"
    log = tmp_path / "log"
    test = ["sh", "-c", f"echo test >> {log}"]
    reload = ["sh", "-c", f"echo reload >> {log}"]
    status, message = origin_resolver.update(
        "home.example.net",
        32400,
        str(servers),
        reload=True,
        resolver=fixed("203.0.113.9"),
        nginx_test=test,
        nginx_reload=reload,
    )
    assert status == 0 and "now resolves to 203.0.113.9" in message
    assert "server 203.0.113.9:32400;\n" in servers.read_text()
    assert log.read_text() == "test\nreload\n"
    # Unchanged: nothing is written and nginx is left alone.
    status, message = origin_resolver.update(
        "home.example.net",
        32400,
        str(servers),
        reload=True,
        resolver=fixed("203.0.113.9"),
        nginx_test=test,
        nginx_reload=reload,
    )
    assert (status, message) == (0, "") and log.read_text() == "test\nreload\n"
    # Moved (dynamic DNS), with an IPv6 address: nginx's bracketed form.
    origin_resolver.update(
        "home.example.net",
        32400,
        str(servers),
        reload=True,
        resolver=fixed("2001:db8::7"),
        nginx_test=test,
        nginx_reload=reload,
    )
    assert "server [2001:db8::7]:32400;\n" in servers.read_text()
    assert log.read_text().count("reload") == 2


def test_a_name_that_stops_resolving_keeps_its_last_addresses(tmp_path: Path) -> None:
    servers = tmp_path / "servers.conf"
    origin_resolver.update("home.example.net", 32400, str(servers), reload=False, resolver=fixed("203.0.113.9"))
    before = servers.read_text()
    status, message = origin_resolver.update("home.example.net", 32400, str(servers), reload=True, resolver=fixed())
    assert status == 0 and "keeping its last addresses" in message
    assert servers.read_text() == before


def test_a_name_that_never_resolved_points_nginx_at_a_socket_that_answers_502(tmp_path: Path) -> None:
    servers = tmp_path / "servers.conf"
    status, _ = origin_resolver.update("home.example.net", 32400, str(servers), reload=False, resolver=fixed())
    assert status == 0
    assert f"server unix:{origin_resolver.UNRESOLVED_SOCKET};" in servers.read_text()
    assert not origin_resolver.has_addresses(servers.read_text())


def test_a_config_nginx_refuses_leaves_the_previous_servers(tmp_path: Path) -> None:
    servers = tmp_path / "servers.conf"
    origin_resolver.update("home.example.net", 32400, str(servers), reload=False, resolver=fixed("203.0.113.9"))
    before = servers.read_text()
    status, message = origin_resolver.update(
        "home.example.net", 32400, str(servers), reload=True, resolver=fixed("203.0.113.10"), nginx_test=["false"]
    )
    assert status == 1 and "nginx -t refused" in message
    assert servers.read_text() == before


def test_the_program_runs_on_its_own_as_the_hub_runs_it(tmp_path: Path) -> None:
    """Copied to the hub as one file: it must run without the package on the path."""
    servers = tmp_path / "servers.conf"
    result = subprocess.run(
        [sys.executable, "-I", str(RESOLVER), "--host", "localhost", "--port", "32400", "--servers-file", str(servers)],
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert "resolves to" in result.stdout
    assert origin_resolver.has_addresses(servers.read_text())


def test_a_deploy_retires_what_a_release_of_another_origin_link_installed() -> None:
    """Switching the origin link in place: a release without the resolver stops and removes the resolver an
    earlier release enabled, and removes another link's certificates and keys before nginx -t."""
    wireguard = config_from(wireguard_values())
    script = render.deploy_nginx_script(wireguard, "us", render.pop_release(wireguard, "us"))
    retired = [line.split()[3] for line in script.splitlines() if line.strip().startswith("systemctl disable --now")]
    assert retired == [
        *sorted(render.ORIGIN_RESOLVER_UNITS, key=lambda u: not u.endswith(".timer")),
        render.UPSTREAM_WATCH_UNIT,
    ]
    assert f"rm -f /usr/local/sbin/{render.ORIGIN_RESOLVER_PROGRAM}" in script
    removed = next(line for line in script.splitlines() if line.startswith("rm -f /etc/nginx/")).split()[2:]
    assert f"/etc/nginx/{render.ORIGIN_SERVERS_FILE}" in removed
    assert f"/etc/nginx/{render.ORIGIN_CLIENT_KEY_FILE}" in removed
    assert f"/etc/nginx/{render.PEER_SERVER_KEY_FILE}" not in removed, "the hub's own peer key stays"
    assert script.index("rm -f /etc/nginx/") < script.index("nginx -t -q"), "nginx -t runs without them"
    public = config_from(example_values())
    kept = render.deploy_nginx_script(public, "us", render.pop_release(public, "us"))
    assert "systemctl disable --now plexcdn-origin-resolve" not in kept
    removed = next(line for line in kept.splitlines() if line.startswith("rm -f /etc/nginx/")).split()[2:]
    assert f"/etc/nginx/{render.ORIGIN_SERVERS_FILE}" not in removed, "a hub that follows the name keeps its servers"


def test_the_hub_tunnel_installs_its_tools_when_missing_and_comes_down_on_delete() -> None:
    deploy = render.deploy_wireguard_script()
    assert "command -v wg-quick" in deploy and "install --no-install-recommends wireguard-tools" in deploy
    remove = render.remove_wireguard_script()
    assert f"systemctl disable --now wg-quick@{render.WIREGUARD_INTERFACE}" in remove
    assert f"rm -f /etc/wireguard/{render.WIREGUARD_INTERFACE}.conf" in remove


def test_every_units_exec_lines_leave_the_shells_variables_to_the_shell() -> None:
    """systemd replaces $NAME in Exec lines itself, inside quotes too: a renewal service written with the
    shell's $CERTBOT ran `sh -c` with nothing, and certificates never renewed."""
    from labs.cert_lab import systemd_exec_argv

    config = config_from(example_values())
    units = {
        path: text for path, text in render.certbot_files(config, "us").items() if path.endswith((".service", ".timer"))
    }
    units.update(render.pop_release(config, "us").units)
    assert "/etc/systemd/system/plexcdn-certbot-renew.service" in units
    for text in units.values():
        for line in text.splitlines():
            if line.startswith("Exec"):
                systemd_exec_argv(line.split("=", 1)[1])
    renew = units["/etc/systemd/system/plexcdn-certbot-renew.service"]
    command = systemd_exec_argv(
        next(line for line in renew.splitlines() if line.startswith("ExecStart=")).split("=", 1)[1]
    )
    assert command[:2] == ["/bin/sh", "-c"] and command[2].startswith("$CERTBOT renew ")
    assert "--no-random-sleep-on-renew" in command[2], "the timer spreads renewals; an operator's start returns"
