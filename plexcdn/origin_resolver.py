#!/usr/bin/env python3
"""plexcdn-origin-resolve: keep a hub's nginx pointed at the Plex server's current address.

    plexcdn-origin-resolve --host NAME --port PORT --servers-file FILE [--reload]

nginx resolves an upstream's name once, when it loads: a home server's name that does not resolve at
that moment stops nginx, and a dynamic-DNS name that moves is never followed. Resolving in nginx at
request time (a variable in proxy_pass) would lose the upstream's keepalive pool, which is what makes a
seek cost one round trip. So this program resolves NAME outside nginx and writes FILE, included in the
hub's `upstream` block, with one `server` line per address; nginx is reloaded only when the addresses
change (`--reload`: `nginx -t` first, the previous file back if it fails).

IPv4 addresses are used when there are any (home routers forward IPv4 ports; a home IPv6 address is
often firewalled), IPv6 otherwise. When NAME does not resolve, FILE keeps the last addresses it had; if it
never had any, it names a socket that does not exist, so nginx starts and answers 502 until NAME
resolves. A systemd timer runs it every minute. Standard library only: this file is copied to the hub.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import re
import socket
import subprocess
import sys
from collections.abc import Callable, Sequence

UNRESOLVED_SOCKET = "/run/plex-cdn/origin-unresolved.sock"
NGINX_TEST = ("nginx", "-t", "-q")
NGINX_RELOAD = ("systemctl", "reload", "nginx")
_SERVER_LINE = re.compile(r"^server (\[[0-9a-fA-F:.]+\]|[0-9.]+):\d+;$", re.MULTILINE)

Resolver = Callable[[str, int], list[str]]


def resolve(host: str, port: int) -> list[str]:
    """NAME's addresses: the IPv4 ones if there are any, else the IPv6 ones; sorted, without repeats."""
    try:
        answers = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        return []
    by_family: dict[int, set[str]] = {}
    for family, _, _, _, sockaddr in answers:
        by_family.setdefault(family, set()).add(str(sockaddr[0]))
    for family in (socket.AF_INET, socket.AF_INET6):
        if by_family.get(family):
            return sorted(by_family[family], key=ipaddress.ip_address)
    return []


def _endpoint(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def servers_conf(host: str, port: int, addresses: Sequence[str]) -> str:
    """The upstream's server lines for `addresses`, or the never-resolved placeholder when there are none."""
    if not addresses:
        return (
            f"# plex-cdn: {host} has not resolved yet; requests get 502 until it does (retried every minute).\n"
            f"server unix:{UNRESOLVED_SOCKET};\n"
        )
    lines = "".join(f"server {_endpoint(address, port)};\n" for address in addresses)
    return f"# plex-cdn: {host} as plexcdn-origin-resolve last found it; rewritten when it moves.\n{lines}"


def has_addresses(conf: str) -> bool:
    return _SERVER_LINE.search(conf) is not None


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as file:
            return file.read()
    except FileNotFoundError:
        return None


def _write(path: str, text: str) -> None:
    temporary = f"{path}.new"
    with open(temporary, "w", encoding="utf-8") as file:
        file.write(text)
    os.chmod(temporary, 0o644)
    os.replace(temporary, path)


def _run(argv: Sequence[str]) -> tuple[bool, str]:
    result = subprocess.run(list(argv), capture_output=True, text=True, check=False)
    return result.returncode == 0, (result.stdout + result.stderr).strip()


def update(
    host: str,
    port: int,
    servers_file: str,
    *,
    reload: bool,
    resolver: Resolver = resolve,
    nginx_test: Sequence[str] = NGINX_TEST,
    nginx_reload: Sequence[str] = NGINX_RELOAD,
) -> tuple[int, str]:
    """Rewrite `servers_file` when NAME's addresses changed; return (exit status, what happened)."""
    current = _read(servers_file)
    addresses = resolver(host, port)
    if not addresses and current is not None and has_addresses(current):
        return 0, f"{host} did not resolve; keeping its last addresses"
    wanted = servers_conf(host, port, addresses)
    if wanted == current:
        return 0, ""
    _write(servers_file, wanted)
    found = ", ".join(addresses) if addresses else "nothing yet"
    if not reload:
        return 0, f"{host} resolves to {found}"
    passed, output = _run(nginx_test)
    if not passed:
        if current is None:
            os.remove(servers_file)
        else:
            _write(servers_file, current)
        return (
            1,
            f"{host} resolves to {found}, but nginx -t refused the new servers, so they stay as they were: {output}",
        )
    reloaded, output = _run(nginx_reload)
    if not reloaded:
        return 1, f"{host} resolves to {found}; nginx did not reload: {output}"
    return 0, f"{host} now resolves to {found}; nginx reloaded"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="plexcdn-origin-resolve", description=__doc__.split("\n", 1)[0])
    parser.add_argument("--host", required=True, help="the Plex server's DNS name")
    parser.add_argument("--port", required=True, type=int, help="the port the hub connects to")
    parser.add_argument("--servers-file", required=True, help="the file the hub's upstream block includes")
    parser.add_argument("--reload", action="store_true", help="test and reload nginx when the addresses change")
    args = parser.parse_args(argv)
    status, message = update(args.host, args.port, args.servers_file, reload=args.reload)
    if message:
        print(f"plexcdn-origin-resolve: {message}", file=sys.stderr if status else sys.stdout)
    return status


if __name__ == "__main__":
    sys.exit(main())
