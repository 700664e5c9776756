"""What a stack asks of the world outside its graph: the cloud VMs it creates (with the labels the providers
show and the settings that define them) and the machines at home it logs in to over SSH.

The preflight reads this to know what to look for in the accounts, and where `pulumi up` will have to reach.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Literal

from plexcdn.config import StackConfig
from plexcdn.setting_kinds import is_local_network


@dataclass(frozen=True)
class CloudVm:
    setting: str  # where it is configured, e.g. pops[1] or transcode.slaves[0]
    kind: Literal["POP", "transcode slave", "library peer"]
    name: str
    provider: str
    region: str
    size: str
    label: str  # the Droplet name or Linode label the program gives it

    def describe(self) -> str:
        return f"{self.setting} ({self.kind} {self.name})"


@dataclass(frozen=True)
class HomeHost:
    """A machine the stack manages over SSH but does not create."""

    setting: str  # the setting that holds its address
    what: str
    host: str
    port: int

    @property
    def on_home_network(self) -> bool | None:
        """True for a private address, False for a public one, None for a name (resolving it is not ours to do)."""
        try:
            address = ipaddress.ip_address(self.host)
        except ValueError:
            return None
        return is_local_network(ipaddress.ip_network(address))


def pop_label(config: StackConfig, pop: str) -> str:
    return f"plex-cdn-{config.stack}-{pop}"


def transcode_label(config: StackConfig, slave: str) -> str:
    return f"plex-cdn-{config.stack}-transcode-{slave}"


def library_label(config: StackConfig, peer: str) -> str:
    return f"plex-cdn-{config.stack}-library-{peer}"


def certbot_user_name(config: StackConfig) -> str:
    return f"plex-cdn-{config.stack}-certbot"


def cloud_vms(config: StackConfig) -> tuple[CloudVm, ...]:
    """Every VM the stack creates, in config order."""
    vms = [
        CloudVm(f"pops[{index}]", "POP", pop.name, pop.provider, pop.region, pop.size, pop_label(config, pop.name))
        for index, pop in enumerate(config.pops)
    ]
    if config.transcode is not None:
        vms += [
            CloudVm(
                f"transcode.slaves[{index}]",
                "transcode slave",
                slave.name,
                slave.provider,
                slave.region,
                slave.size,
                transcode_label(config, slave.name),
            )
            for index, slave in enumerate(config.transcode.slaves)
            if slave.kind == "cloud"
        ]
    if config.library is not None:
        for role, peers in (("seeders", config.library.seeders), ("viewers", config.library.viewers)):
            vms += [
                CloudVm(
                    f"library.{role}[{index}]",
                    "library peer",
                    peer.name,
                    peer.provider,
                    peer.region,
                    peer.size,
                    library_label(config, peer.name),
                )
                for index, peer in enumerate(peers)
                if peer.kind == "cloud"
            ]
    return tuple(vms)


def home_hosts(config: StackConfig) -> tuple[HomeHost, ...]:
    """Every machine `pulumi up` logs in to that it did not create: the Plex server, host slaves, host peers."""
    hosts: list[HomeHost] = []
    agent = config.origin.agent
    if agent is not None:
        hosts.append(HomeHost("origin.agent.sshHost", "the Plex server (origin agent)", agent.ssh_host, agent.ssh_port))
    transcode = config.transcode
    if transcode is not None:
        hosts.append(
            HomeHost(
                "transcode.origin.host", "the Plex server (transcode)", transcode.origin.host, transcode.origin.port
            )
        )
        hosts += [
            HomeHost(f"transcode.slaves[{index}].host", f"transcode slave {slave.name}", slave.host, slave.port)
            for index, slave in enumerate(transcode.slaves)
            if slave.kind == "host"
        ]
    if config.library is not None:
        for role, peers in (("seeders", config.library.seeders), ("viewers", config.library.viewers)):
            hosts += [
                HomeHost(f"library.{role}[{index}].host", f"library peer {peer.name}", peer.host, peer.port)
                for index, peer in enumerate(peers)
                if peer.kind == "host"
            ]
    return tuple(hosts)
