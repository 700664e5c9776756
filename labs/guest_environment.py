"""What the boot lab gives its guests besides the program's user_data: the environment of a "cloud".

A provider's VM gets its network from the provider, a resolver, a route to the internet and a trust
store with the public CAs. The boot lab's guests get, instead:

- eth0, the "public" NIC, on the lab bridge: a static address from `LAB_SUBNET`, the default route
  and the only resolver (the lab DNS). Nothing beyond the lab answers there: no route leaves the lab.
- eth1, QEMU's user-mode network, restricted (`restrict=on`): DHCP for an address, no DNS, no
  routes; its one open destination is the package cache at `CACHE_GUEST_ADDRESS:CACHE_GUEST_PORT`
  (a `guestfwd` to the cache on this machine's loopback).
- in the image (`image_environment`): apt and pip pointed at the cache, the lab CA in the trust store
  and in the CA-bundle variables Python clients read, and NoCloud as the only datasource.

Every such file is listed in docs/boot-lab.md; none of them is the program's.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Final

import yaml

from labs.guest_image import EnvironmentFile, ImageRecipe
from labs.lab_ca import LabCA

UPLINK_SUBNET: Final = ipaddress.IPv4Network("198.18.64.0/24")
CACHE_GUEST_ADDRESS: Final = ipaddress.IPv4Address("198.18.64.100")
CACHE_GUEST_PORT: Final = 3142
CACHE_URL: Final = f"http://{CACHE_GUEST_ADDRESS}:{CACHE_GUEST_PORT}"

# The lab network, clear of the other labs' 198.18.0.0/20, 198.18.40.0/24 and 198.18.96.0/30.
LAB_SUBNET: Final = ipaddress.IPv4Network("198.18.80.0/24")
LAB_GATEWAY: Final = ipaddress.IPv4Address("198.18.80.1")  # the lab namespace's bridge; the lab DNS
SERVICES_ADDRESS: Final = ipaddress.IPv4Address("198.18.80.2")  # HTTPS for Route53, IAM and ACME names
ORIGIN_ADDRESS: Final = ipaddress.IPv4Address("198.18.80.3")  # the Plex stand-in
VIEWER_ADDRESS: Final = ipaddress.IPv4Address("198.18.80.4")  # the viewer namespace
FIRST_GUEST_HOST: Final = 10  # guest i is at 198.18.80.(10 + i)
MAX_GUESTS: Final = 100

CA_FILE_IN_GUEST: Final = "/usr/local/share/ca-certificates/plexcdn-boot-lab.crt"
SYSTEM_BUNDLE: Final = "/etc/ssl/certs/ca-certificates.crt"
# Clients with their own CA bundle (requests' and botocore's certifi in certbot's venv) read these.
CA_BUNDLE_VARIABLES: Final = ("REQUESTS_CA_BUNDLE", "AWS_CA_BUNDLE")


def guest_address(index: int) -> ipaddress.IPv4Address:
    if not 0 <= index < MAX_GUESTS:
        raise ValueError(f"guest index {index} is outside 0..{MAX_GUESTS - 1}")
    return LAB_SUBNET.network_address + FIRST_GUEST_HOST + index


def lab_mac(index: int) -> str:
    return f"52:54:00:80:00:{index:02x}"


def uplink_mac(index: int) -> str:
    return f"52:54:00:64:00:{index:02x}"


@dataclass(frozen=True)
class GuestIdentity:
    """The meta-data a provider's metadata service would give a VM."""

    instance_id: str
    hostname: str


def meta_data(identity: GuestIdentity) -> str:
    return yaml.safe_dump({"instance-id": identity.instance_id, "local-hostname": identity.hostname})


def network_config(index: int) -> str:
    """Netplan v2 for the NoCloud seed: NICs matched by MAC and named as on a Droplet (eth0 public, eth1 private)."""
    config = {
        "version": 2,
        "ethernets": {
            "eth0": {
                "match": {"macaddress": lab_mac(index)},
                "set-name": "eth0",
                "addresses": [f"{guest_address(index)}/{LAB_SUBNET.prefixlen}"],
                "routes": [{"to": "default", "via": str(LAB_GATEWAY)}],
                "nameservers": {"addresses": [str(LAB_GATEWAY)]},
            },
            "eth1": {
                "match": {"macaddress": uplink_mac(index)},
                "set-name": "eth1",
                "dhcp4": True,
                "dhcp4-overrides": {
                    "use-dns": False,
                    "use-routes": False,
                    "use-ntp": False,
                    "use-domains": False,
                    "use-hostname": False,
                },
                "dhcp6": False,
                "accept-ra": False,
            },
        },
    }
    return yaml.safe_dump(config, sort_keys=False)


def _text(path: str, content: str, mode: int = 0o644) -> EnvironmentFile:
    return EnvironmentFile(path, content.encode(), mode)


def image_environment(lab_ca: LabCA) -> tuple[tuple[EnvironmentFile, ...], tuple[tuple[str, ...], ...]]:
    """The lab's files in the image and the commands that take them in (run in the image's root)."""
    bundle_settings = " ".join(f"{name}={SYSTEM_BUNDLE}" for name in CA_BUNDLE_VARIABLES)
    files = (
        _text(
            "/etc/apt/apt.conf.d/00plexcdn-lab-proxy",
            f'// plex-cdn boot lab: the package cache on the lab host.\nAcquire::http::Proxy "{CACHE_URL}/";\n',
        ),
        _text(
            "/etc/pip.conf",
            "# plex-cdn boot lab: PyPI through the package cache on the lab host.\n"
            f"[global]\nindex-url = {CACHE_URL}/pypi/simple/\ntrusted-host = {CACHE_GUEST_ADDRESS}\n",
        ),
        EnvironmentFile(CA_FILE_IN_GUEST, lab_ca.root_path.read_bytes()),
        # Services (cloud-final's runcmd, certbot's renewal) get it from systemd, SSH sessions from pam_env.
        _text(
            "/etc/systemd/system.conf.d/90-plexcdn-lab-ca.conf",
            f"# plex-cdn boot lab: Python clients with their own CA bundle trust the system's.\n"
            f"[Manager]\nDefaultEnvironment={bundle_settings}\n",
        ),
        _text(
            "/etc/environment",
            "".join(f"{name}={SYSTEM_BUNDLE}\n" for name in CA_BUNDLE_VARIABLES),
        ),
        _text(
            "/etc/cloud/cloud.cfg.d/90_plexcdn_lab.cfg",
            "# plex-cdn boot lab: the seed disk is the only datasource.\ndatasource_list: [NoCloud, None]\n",
        ),
    )
    commands = (("update-ca-certificates",),)
    return files, commands


def image_recipe(lab_ca: LabCA) -> ImageRecipe:
    files, commands = image_environment(lab_ca)
    return ImageRecipe(environment=files, environment_commands=commands)
