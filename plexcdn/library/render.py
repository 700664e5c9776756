"""Rendering for the library swarm: kubo's config, the swarm's bootstrap and peering lists, the systemd
units, the firewall table and the scripts `pulumi up` runs on each peer over SSH.

Pure functions: the components pass in the keys and addresses that exist only once `pulumi up` made them;
tests call the same functions with placeholders.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import posixpath
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from plexcdn import vm_identity
from plexcdn.config import LibraryConfig, LibraryPeerConfig, StackConfig
from plexcdn.library import keys, kubo, libraryfs, warmer, watcher
from plexcdn.transcode.render import HEREDOC_END, as_root, render_template
from plexcdn.vm_identity import VmIdentity

IPFS_USER: Final = "plexcdn-ipfs"
# The cache warmer asks this machine's Plex with the owner's token: an account of its own, not kubo's, which
# faces the swarm.
WARMER_USER: Final = "plexcdn-warmer"
TOKEN_CREDENTIAL: Final = "plex-token"  # noqa: S105 - the credential's name
# kubo's filestore (seeders add media in place, not copied) takes only files below the repository's parent
# directory: with the repository at the top level, a media folder anywhere qualifies.
IPFS_PATH: Final = "/plexcdn-ipfs"
CONFIG_DIR: Final = "/etc/plex-cdn/library"
PROGRAM_DIR: Final = "/opt/plex-cdn/library"
IPFS_BINARY: Final = "/usr/local/bin/ipfs"
MFS_ROOT: Final = "/plexcdn-library"
FIREWALL_TABLE: Final = "plexcdn_library"
FIREWALL_PATH: Final = f"{CONFIG_DIR}/firewall.nft"
PLEX_PREFERENCES: Final = "/var/lib/plexmediaserver/Library/Application Support/Plex Media Server/Preferences.xml"
PLEX_TOKEN_FILE: Final = f"{CONFIG_DIR}/plex-token"
WATCHER_STATE: Final = "/var/lib/plex-cdn/library/watcher-state.json"
UNIT_IPFS: Final = "plexcdn-ipfs"
UNIT_WATCHER: Final = "plexcdn-library-watcher"
UNIT_WARMER: Final = "plexcdn-library-warmer"
UNIT_FS: Final = "plexcdn-library-fs"
STATUS_DIR: Final = "/var/lib/plex-cdn/library"
FS_STATUS: Final = f"{STATUS_DIR}/fs-status.json"
WARMER_STATUS: Final = f"{STATUS_DIR}/warmer-status.json"
# The library file system's FUSE binding, in a virtualenv of its own: pure Python over libfuse 3 (ctypes), no
# dependencies; the hash is PyPI's wheel mfusepy-3.1.1-py3-none-any.whl, which pip checks before installing.
FS_VENV: Final = f"{PROGRAM_DIR}/venv"
FS_REQUIREMENT: Final = "mfusepy==3.1.1 --hash=sha256:69fb70cfc7f7cce595e6ff586f8451d8298f01f18286a157f24f564b24ec5a37"
# A call on kubo's mount that has not answered within this fails with EIO (up to twice: see libraryfs).
FS_OP_TIMEOUT_S: Final = 15
PLACEHOLDER_ADDRESS: Final = "198.51.100.1"  # TEST-NET-2: renders before a cloud peer has its address


@dataclass(frozen=True)
class Member:
    """One peer as the others see it: who it is and where it answers."""

    name: str
    peer_id: str
    address: str  # an IP address, or a DNS name for a host peer
    sources: tuple[str, ...]  # the networks its connections come from, for the others' firewalls


def multiaddr(member: Member, port: int) -> str:
    """A peer's swarm address, by IP or by DNS name (TCP: the only transport a private swarm has)."""
    try:
        ip = ipaddress.ip_address(member.address)
        proto = "ip4" if ip.version == 4 else "ip6"
    except ValueError:
        proto = "dns"
    return f"/{proto}/{member.address}/tcp/{port}"


def swarm_sources(members: Sequence[Member], peer_name: str) -> list[str]:
    """The networks a peer admits to its swarm port: every other peer's."""
    return sorted({source for member in members if member.name != peer_name for source in member.sources})


def _require_library(config: StackConfig) -> LibraryConfig:
    if config.library is None:
        raise ValueError(f"stack {config.stack} has no plex-cdn:library settings")
    return config.library


def kubo_config(
    config: StackConfig, peer_name: str, identity: keys.PeerIdentity, members: Sequence[Member]
) -> dict[str, Any]:
    """The whole of the peer's `$IPFS_PATH/config`: kubo's defaults for the pinned release with the
    private swarm's settings laid over them."""
    library = _require_library(config)
    peer = library.peer(peer_name)
    me = next(member for member in members if member.name == peer_name)
    others = [member for member in members if member.name != peer_name]
    port = library.swarm_port
    document = kubo.default_config()
    document["Identity"] = {"PeerID": identity.peer_id, "PrivKey": identity.private_key_b64}
    document["Addresses"].update(
        {
            "Swarm": [f"/ip4/0.0.0.0/tcp/{port}", f"/ip6/::/tcp/{port}"],
            "Announce": [multiaddr(me, port)],
            "API": kubo.API_ADDRESS,
            "Gateway": kubo.GATEWAY_ADDRESS,
        }
    )
    # No public bootstrap node: the friends are the whole network.
    document["Bootstrap"] = [f"{multiaddr(member, port)}/p2p/{member.peer_id}" for member in others]
    # Peering keeps the friends connected and reconnects them, so Bitswap asks them first for every block.
    document["Peering"] = {"Peers": [{"ID": m.peer_id, "Addrs": [multiaddr(m, port)]} for m in others]}
    document["Discovery"] = {"MDNS": {"Enabled": False}}
    document["Datastore"]["StorageMax"] = f"{peer.cache_gb}GB"
    document["Experimental"]["FilestoreEnabled"] = peer.role == "seeder"
    bitswap = library.bitswap
    document["Internal"]["Bitswap"] = {
        "EngineBlockstoreWorkerCount": bitswap.engine_blockstore_worker_count,
        "EngineTaskWorkerCount": bitswap.engine_task_worker_count,
        "MaxOutstandingBytesPerPeer": bitswap.max_outstanding_bytes_per_peer,
        "TaskWorkerCount": bitswap.task_worker_count,
    }
    kubo.private_swarm_overrides(document)
    if peer.role == "viewer":
        document["Mounts"].update({"IPFS": "/ipfs", "IPNS": "/ipns", "FuseAllowOther": True})
    return document


def public_part(document: Mapping[str, Any]) -> dict[str, Any]:
    """The config without its private key: what a command may show and what decides a redeploy."""
    shown: dict[str, Any] = json.loads(json.dumps(document))
    shown["Identity"]["PrivKey"] = "(secret)"
    return shown


def digest(document: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(public_part(document), sort_keys=True).encode()).hexdigest()[:16]


def watcher_config(peer: LibraryPeerConfig) -> dict[str, Any]:
    return {
        "media_dir": peer.media_dir,
        "mfs_root": MFS_ROOT,
        "api": kubo.API_URL,
        "interval_s": 30,
        "settle_s": 60,
        "ipns_key": "self",
        "extensions": None,
        "state_file": WATCHER_STATE,
        "nocopy": True,
    }


def fs_config(peer: LibraryPeerConfig, seeders: Mapping[str, str], peer_ids: Mapping[str, str]) -> dict[str, Any]:
    """`seeders`: each seeder's name and IPNS name; `peer_ids`: each peer's ID, for the health check."""
    return {
        "mount_point": peer.mount_dir,
        "seeders": {
            name: {"source": f"/ipns/{ipns}", "peer_id": peer_ids.get(name, "")}
            for name, ipns in sorted(seeders.items())
        },
        "op_timeout_s": FS_OP_TIMEOUT_S,
        "workers_per_seeder": 8,
        "status_file": FS_STATUS,
        "api": kubo.API_URL,
        "health_interval_s": 30,
    }


def warmer_config(peer: LibraryPeerConfig, seeders: Mapping[str, str]) -> dict[str, Any]:
    """`seeders`: each seeder's name and IPNS name."""
    return {
        "plex_url": "http://127.0.0.1:32400",
        "plex_token_credential": TOKEN_CREDENTIAL,
        "api": kubo.API_URL,
        "mounts": {peer.library_path(name): f"/ipns/{ipns}" for name, ipns in sorted(seeders.items())},
        "interval_s": 5,
        "max_parallel": 2,
        # Room for what Plex is playing, inside the datastore's own bound.
        "max_cache_bytes": peer.cache_gb * 1000**3,
        "fs_status_file": FS_STATUS,
        "status_file": WARMER_STATUS,
        "rescan_interval_s": 60,
    }


def firewall_rules(library: LibraryConfig, sources: Sequence[str]) -> str:
    networks = [ipaddress.ip_network(source, strict=False) for source in sources]
    return render_template(
        "library/firewall.nft.j2",
        table=FIREWALL_TABLE,
        port=library.swarm_port,
        ipv4=sorted({str(n) for n in networks if n.version == 4}),
        ipv6=sorted({str(n) for n in networks if n.version == 6}),
    )


def _program(module: Any) -> str:
    return Path(module.__file__).read_text()


def install_script(
    config: StackConfig,
    peer_name: str,
    *,
    document: Mapping[str, Any],
    members: Sequence[Member],
    seeder_names: Mapping[str, str],
    cloud: bool,
) -> str:
    """Installs or updates kubo and the peer's services. Standard input carries the secrets: the swarm key's
    three lines, then the kubo config (it holds the peer's private key)."""
    library = _require_library(config)
    peer = library.peer(peer_name)
    context: dict[str, Any] = {
        "stack": config.stack,
        "library": library,
        "peer": peer,
        "cloud": cloud,
        "kubo": kubo.RELEASE,
        "digest": digest(document),
        "ipfs_user": IPFS_USER,
        "warmer_user": WARMER_USER,
        "api_group": kubo.API_GROUP,
        "ipfs_path": IPFS_PATH,
        "ipfs_binary": IPFS_BINARY,
        "config_dir": CONFIG_DIR,
        "program_dir": PROGRAM_DIR,
        "mfs_root": MFS_ROOT,
        "firewall_path": FIREWALL_PATH,
        "firewall_table": FIREWALL_TABLE,
        "firewall": firewall_rules(library, swarm_sources(members, peer_name)),
        "units": {
            UNIT_IPFS: ipfs_unit(config, peer_name),
            **({UNIT_WATCHER: watcher_unit(config, peer_name)} if peer.role == "seeder" else {}),
            **({UNIT_FS: fs_unit(config, peer_name)} if peer.role == "viewer" else {}),
            **({UNIT_WARMER: warmer_unit(config, peer_name)} if peer.plex else {}),
        },
        "watcher_config": json.dumps(watcher_config(peer), indent=1) if peer.role == "seeder" else "",
        "warmer_config": json.dumps(warmer_config(peer, seeder_names), indent=1) if peer.plex else "",
        "watcher_source": _program(watcher) if peer.role == "seeder" else "",
        "warmer_source": _program(warmer) if peer.plex else "",
        "fs_config": json.dumps(
            fs_config(peer, seeder_names, {member.name: member.peer_id for member in members}), indent=1
        )
        if peer.role == "viewer"
        else "",
        "fs_source": _program(libraryfs) if peer.role == "viewer" else "",
        "fs_venv": FS_VENV,
        "fs_requirement": FS_REQUIREMENT,
        "status_dir": STATUS_DIR,
        "seeder_names": sorted(seeder_names),
        "plex_preferences": PLEX_PREFERENCES,
        "plex_token_file": PLEX_TOKEN_FILE,
        "heredoc_end": HEREDOC_END,
    }
    return as_root(render_template("library/install.sh.j2", **context), "root" if cloud else peer.user)


def uninstall_script(config: StackConfig, peer_name: str) -> str:
    """What `pulumi destroy` undoes on a machine of yours: the services, kubo's repository, the firewall table
    and the library links. The media folder is never touched."""
    library = _require_library(config)
    peer = library.peer(peer_name)
    return as_root(
        render_template(
            "library/uninstall.sh.j2",
            peer=peer,
            units=[UNIT_WARMER, UNIT_FS, UNIT_WATCHER, UNIT_IPFS],
            ipfs_user=IPFS_USER,
            warmer_user=WARMER_USER,
            api_group=kubo.API_GROUP,
            ipfs_path=IPFS_PATH,
            ipfs_binary=IPFS_BINARY,
            config_dir=CONFIG_DIR,
            program_dir=PROGRAM_DIR,
            firewall_table=FIREWALL_TABLE,
            seeders=[seeder.name for seeder in library.seeders],
            watcher_state_dir=posixpath.dirname(WATCHER_STATE),
        ),
        peer.user,
    )


def ipfs_unit(config: StackConfig, peer_name: str) -> str:
    peer = _require_library(config).peer(peer_name)
    return render_template(
        "library/plexcdn-ipfs.service.j2",
        swarm=_require_library(config).swarm,
        peer=peer,
        ipfs_user=IPFS_USER,
        api_group=kubo.API_GROUP,
        runtime_dir_name=posixpath.basename(kubo.RUNTIME_DIR),
        ipfs_path=IPFS_PATH,
        ipfs_binary=IPFS_BINARY,
        firewall_path=FIREWALL_PATH,
    )


def watcher_unit(config: StackConfig, peer_name: str) -> str:
    """The watcher reads the media folder (as kubo's account, which kubo's filestore reads it as) and talks to kubo
    on its socket, nothing else: no network at all."""
    return render_template(
        "library/service.j2",
        description=f"plex-cdn library: add new files of {_require_library(config).peer(peer_name).media_dir} to IPFS",
        user=IPFS_USER,
        api_group=kubo.API_GROUP,
        program=f"{PROGRAM_DIR}/watcher.py",
        config_file=f"{CONFIG_DIR}/watcher.json",
        after=f"{UNIT_IPFS}.service",
        credentials=[],
        protect_home="read-only",
        read_write_paths=[posixpath.dirname(WATCHER_STATE)],
        address_families=["AF_UNIX"],
        loopback_only=False,
    )


def warmer_unit(config: StackConfig, peer_name: str) -> str:
    """The warmer, as an account of its own: Plex's token arrives as its credential, kubo on its socket, Plex on
    loopback, and nothing else."""
    _require_library(config).peer(peer_name)
    return render_template(
        "library/service.j2",
        description="plex-cdn library: fetch the rest of what Plex is playing ahead of the player",
        user=WARMER_USER,
        api_group=kubo.API_GROUP,
        program=f"{PROGRAM_DIR}/warmer.py",
        config_file=f"{CONFIG_DIR}/warmer.json",
        after=f"{UNIT_IPFS}.service",
        credentials=[(TOKEN_CREDENTIAL, PLEX_TOKEN_FILE)],
        protect_home="yes",
        read_write_paths=[],
        address_families=["AF_UNIX", "AF_INET", "AF_INET6"],
        loopback_only=True,
    )


def fs_unit(config: StackConfig, peer_name: str) -> str:
    peer = _require_library(config).peer(peer_name)
    return render_template(
        "library/plexcdn-library-fs.service.j2",
        peer=peer,
        user=IPFS_USER,
        python=f"{FS_VENV}/bin/python",
        program=f"{PROGRAM_DIR}/libraryfs.py",
        config_file=f"{CONFIG_DIR}/fs.json",
        after=f"{UNIT_IPFS}.service",
    )


def cloud_init(config: StackConfig, peer_name: str, identity: VmIdentity | None = None) -> str:
    return render_template(
        "library/cloud-init.yaml.j2",
        stack=config.stack,
        peer=_require_library(config).peer(peer_name),
        **vm_identity.template_context(identity or vm_identity.placeholder_identity(config.admin.ssh_public_key)),
    )


def placeholder_members(config: StackConfig) -> list[Member]:
    """Every peer with a peer ID from a fixed test key and its configured or a documentation address."""
    library = _require_library(config)
    members = []
    for index, peer in enumerate(library.peers):
        pem = placeholder_key(index)
        address = peer.host or str(ipaddress.ip_address(PLACEHOLDER_ADDRESS) + index)
        sources = peer.swarm_cidrs or (f"{address}/32",)
        members.append(Member(peer.name, keys.identity(pem).peer_id, address, tuple(sources)))
    return members


def placeholder_key(index: int) -> str:
    """A fixed Ed25519 key for renders and tests, so that output is stable; never used by a stack."""
    return keys.private_key_pem(hashlib.sha256(f"plex-cdn placeholder peer {index}".encode()).digest())
