"""The Plex server's own settings the CDN needs, and the scripts that apply and read them through Plex's API.

Plex's `/:/prefs` lists every preference by id (`GET`, XML or JSON) and changes one with
`PUT /:/prefs?<id>=<value>`, both with the server owner's `X-Plex-Token`. Where `pulumi up` manages the Plex host
over SSH (the origin agent, transcode offload), a script run there reads that token from Plex's Preferences.xml
and talks to Plex on loopback: the token never leaves the host. A stack that does not manage the host may give
the token as the secret `plex-cdn:plexToken`; then the script runs on the hub, which reaches Plex over the
stack's own (verified or tunnelled) hop, and the token arrives on the script's stdin.

Plex's `allowedNetworks` (addresses that skip sign-in) is never written: the scripts only read it, and fail
when it admits an address the CDN's requests reach Plex from.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Final, Literal

from plexcdn.config import StackConfig
from plexcdn.render import render_template

PREFS_PATH: Final = "/:/prefs"
SESSIONS_PATH: Final = "/status/sessions"
PREFERENCES_FILE: Final = "Preferences.xml"
# Preferences the program never sets, whatever a caller asks: each one lets addresses skip Plex's sign-in.
NEVER_SET: Final = frozenset({"allowednetworks"})
SECURE_CONNECTIONS_PREFERRED: Final = "1"  # /:/prefs enumValues: 1:Preferred|0:Required (older: |2:Disabled)
# Where the script that applies the settings keeps Plex's values from before the first change, on the machine it
# runs on, for `pulumi destroy` to put back.
PREVIOUS_FILE: Final = "/var/lib/plex-cdn/plex-settings.previous"

PrefKind = Literal["text", "int", "bool"]


@dataclass(frozen=True)
class PlexPref:
    """One Plex preference the CDN needs: its id in /:/prefs, the value a PUT sends, and what a person sees."""

    id: str
    value: str
    kind: PrefKind
    label: str  # Plex Web's label
    place: str  # where Plex Web shows it
    shown: str  # the value as Plex Web shows it
    why: str


def _bool(value: bool) -> str:
    # What python-plexapi sends for a bool setting; /:/prefs reads back 1/0 or true/false.
    return "true" if value else "false"


def desired_prefs(config: StackConfig) -> tuple[PlexPref, ...]:
    """The preferences the stack needs, in the order they are applied."""
    plex = config.plex
    prefs = [
        PlexPref(
            "customConnections",
            config.plex_custom_access_url,
            "text",
            "Custom server access URLs",
            "Settings > Network (advanced)",
            config.plex_custom_access_url,
            "plex.tv hands this URL to every app looking for the server, so apps connect to the nearest POP; the "
            "port must be written out, or apps try port 32400 at the CDN's name",
        ),
        PlexPref(
            "secureConnections",
            SECURE_CONNECTIONS_PREFERRED,
            "int",
            "Secure connections",
            "Settings > Network",
            "Preferred",
            "apps use HTTPS, which is all the POPs serve to viewers; Required would also refuse the plain HTTP the "
            "stack's private hops use (the hub through its WireGuard tunnel)",
        ),
        PlexPref(
            "PublishServerOnPlexOnlineKey",
            _bool(plex.remote_access),
            "bool",
            "Remote Access",
            "Settings > Remote Access",
            "enabled" if plex.remote_access else "disabled",
            "with Remote Access on, Plex publishes your home address (and maps a port with UPnP) and apps that reach "
            "it stream straight from your home ISP, past every POP"
            + ("; on because plex.remoteAccess is true" if plex.remote_access else ""),
        ),
        PlexPref(
            "RelayEnabled",
            _bool(plex.relay),
            "bool",
            "Enable Relay",
            "Settings > Network (advanced)",
            "on" if plex.relay else "off",
            "an app that cannot connect otherwise falls back to Plex's relay, capped at 1-2 Mbit/s, which hides a "
            "broken CDN path behind a blurry picture" + ("; on because plex.relay is true" if plex.relay else ""),
        ),
    ]
    if plex.lan_networks:
        networks = ",".join(plex.lan_networks)
        prefs.append(
            PlexPref(
                "LanNetworksBandwidth",
                networks,
                "text",
                "LAN Networks",
                "Settings > Network (advanced)",
                networks,
                "only your home counts as local for bandwidth limits; every viewer of the CDN is remote",
            )
        )
    for pref in prefs:
        if pref.id.lower() in NEVER_SET:
            raise ValueError(f"{pref.id} lets addresses skip Plex's sign-in; the program never sets it")
    return tuple(prefs)


# --- where the settings are applied from ------------------------------------------------------------------------


@dataclass(frozen=True)
class PlexHost:
    """The Plex host as `pulumi up` (and `status`) reach it over SSH."""

    setting: str  # the stack setting it comes from
    host: str
    port: int
    user: str
    host_key: str


def managed_host(config: StackConfig) -> PlexHost | None:
    """Where the program manages the Plex host over SSH: the origin agent's access, else transcode offload's."""
    agent = config.origin.agent
    if agent is not None:
        return PlexHost("origin.agent", agent.ssh_host, agent.ssh_port, agent.ssh_user, agent.ssh_host_key)
    if config.transcode is not None:
        origin = config.transcode.origin
        return PlexHost("transcode.origin", origin.host, origin.port, origin.user, origin.host_key)
    return None


@dataclass(frozen=True)
class PlexEndpoint:
    """How a script reaches Plex's API: a base URL and the curl options that make the hop verified."""

    url: str
    curl_args: tuple[str, ...] = ()


def local_endpoint(config: StackConfig) -> PlexEndpoint:
    """Plex on the Plex host's own loopback."""
    return PlexEndpoint(f"http://127.0.0.1:{config.origin.port}")


def hub_endpoint(config: StackConfig) -> PlexEndpoint | None:
    """Plex as a hub reaches it, when the token may travel that way: through the WireGuard tunnel, or over TLS
    verified for origin.verifyName. None when the hop is unverified (or ends at the agent, which manages the host)."""
    origin = config.origin
    if origin.link == "wireguard":
        return PlexEndpoint(f"http://{origin.home_tunnel_address}:{origin.port}")
    if origin.agent is not None or origin.verify_name is None:
        return None
    name = origin.verify_name
    if name == origin.host:
        return PlexEndpoint(f"https://{name}:{origin.port}")
    return PlexEndpoint(
        f"https://{name}:{origin.port}", ("--connect-to", f"{name}:{origin.port}:{origin.host}:{origin.port}")
    )


Applier = Literal["plex-host", "hub", "none"]


def applier(config: StackConfig, plex_token_given: bool) -> Applier:
    """Who applies the settings at `pulumi up`: a script on the Plex host, one on a hub with plex-cdn:plexToken,
    or nobody (the user, with the values `plex-settings` prints)."""
    if not config.plex.apply_settings:
        return "none"
    if managed_host(config) is not None:
        return "plex-host"
    if plex_token_given and hub_endpoint(config) is not None:
        return "hub"
    return "none"


def applier_warnings(config: StackConfig, plex_token_given: bool) -> list[str]:
    """What is worth saying about where the token is used."""
    warnings = []
    if plex_token_given and managed_host(config) is not None:
        warnings.append(
            "plex-cdn:plexToken is set but the Plex host is managed over SSH: the settings are applied there with "
            "the token Plex keeps itself, and plexToken is not used"
        )
    elif plex_token_given and hub_endpoint(config) is None and config.plex.apply_settings:
        warnings.append(
            "plex-cdn:plexToken is set but the hub's hop to Plex is not verified (origin.verifyName is not set): "
            "the token is not sent over it and the Plex settings are not applied; set origin.verifyName, or set "
            "them by hand (python -m plexcdn plex-settings)"
        )
    return warnings


# --- addresses the CDN reaches Plex from -------------------------------------------------------------------------


@dataclass(frozen=True)
class CdnSource:
    address: str
    what: str


def cdn_sources(config: StackConfig, pop_addresses: Iterable[tuple[str, str]]) -> tuple[CdnSource, ...]:
    """Addresses the CDN's requests can reach Plex from, none of which may skip Plex's sign-in: every POP's
    addresses (`(pop, address)` pairs), the origin agent's loopback, the hub's end of the WireGuard tunnel."""
    sources: list[CdnSource] = []
    if config.origin.agent is not None:
        sources += [CdnSource("127.0.0.1", "the origin agent"), CdnSource("::1", "the origin agent")]
    if config.origin.link == "wireguard":
        sources.append(CdnSource(str(config.origin.hub_tunnel_address), "the hub's end of the WireGuard tunnel"))
    for pop, address in pop_addresses:
        if address:
            sources.append(CdnSource(str(ipaddress.ip_address(address)), f"POP {pop}"))
    return tuple(dict.fromkeys(sources))


# --- the scripts -------------------------------------------------------------------------------------------------


def _quoted(value: str) -> str:
    """Always single-quoted, so no value (a comma-separated list, say) reads to shellcheck as anything else."""
    return "'" + value.replace("'", "'\\''") + "'"


def _words(values: Iterable[str]) -> str:
    return " ".join(_quoted(value) for value in values)


def _api_context(config: StackConfig, endpoint: PlexEndpoint, token_from_stdin: bool) -> dict[str, object]:
    preferences = f"{config.plex_app_data_dir.rstrip('/')}/{PREFERENCES_FILE}"
    return {
        "plex_url": _quoted(endpoint.url),
        "curl_args": _words(endpoint.curl_args),
        "token_file": "" if token_from_stdin else _quoted(preferences),
    }


def _where(token_from_stdin: bool) -> str:
    return "the token from stdin" if token_from_stdin else "on the Plex host, with the token Plex keeps"


def apply_script(
    config: StackConfig,
    endpoint: PlexEndpoint,
    sources: Sequence[CdnSource],
    token_from_stdin: bool = False,
    previous_file: str = PREVIOUS_FILE,
) -> str:
    """The script that applies `desired_prefs`, reads them back and checks allowedNetworks; exit status 1 names
    what is not in place. The token comes from Preferences.xml, or (`token_from_stdin`) from its stdin. Plex's
    values from before the first change are kept in `previous_file`."""
    prefs = desired_prefs(config)
    return render_template(
        "plex/apply-settings.sh.j2",
        where=_where(token_from_stdin),
        previous_file=_quoted(previous_file),
        pref_ids=_words(pref.id for pref in prefs),
        pref_values=_words(pref.value for pref in prefs),
        pref_kinds=_words(pref.kind for pref in prefs),
        pref_labels=_words(pref.label for pref in prefs),
        cdn_addresses=_words(source.address for source in sources),
        cdn_sources=_words(source.what for source in sources),
        **_api_context(config, endpoint, token_from_stdin),
    )


def restore_script(
    config: StackConfig, endpoint: PlexEndpoint, token_from_stdin: bool = False, previous_file: str = PREVIOUS_FILE
) -> str:
    """The script `pulumi destroy` runs: Plex's values from before the first change go back; it never fails."""
    return render_template(
        "plex/restore-settings.sh.j2",
        where=_where(token_from_stdin),
        previous_file=_quoted(previous_file),
        **_api_context(config, endpoint, token_from_stdin),
    )


def sessions_script(config: StackConfig) -> str:
    """The script `status` runs on the Plex host: Plex's sessions as JSON, tokens blanked."""
    return render_template("plex/sessions.sh.j2", **_api_context(config, local_endpoint(config), False))


# --- what a person reads -----------------------------------------------------------------------------------------


def how_applied(applied_by: Applier, config: StackConfig) -> str:
    host = managed_host(config)
    if applied_by == "plex-host" and host is not None:
        return f"pulumi up applies these on the Plex host ({host.setting}: {host.user}@{host.host}) over SSH"
    if applied_by == "hub":
        return "pulumi up applies these through the hub with plex-cdn:plexToken"
    if not config.plex.apply_settings:
        return "plex.applySettings is false: set these in Plex yourself"
    if hub_endpoint(config) is not None:
        return (
            "set these in Plex yourself, or let pulumi up apply them through the hub with the server's token: "
            "`pulumi config set --secret plex-cdn:plexToken`"
        )
    return "set these in Plex yourself (pulumi up does not manage the Plex host)"


def settings_text(config: StackConfig, applied_by: Applier) -> str:
    lines = [f"Plex settings for {config.shared_url}: {how_applied(applied_by, config)}"]
    for pref in desired_prefs(config):
        lines.append(f"  {pref.place} > {pref.label}: {pref.shown}   [{pref.id}={pref.value}]")
        lines.append(f"      why: {pref.why}")
    lines.append(
        "  never: Settings > Network > List of IP addresses and networks that are allowed without auth "
        "(allowedNetworks) must not hold a POP's, a tunnel's or, with the origin agent, a loopback address: "
        "every viewer of the CDN would skip sign-in"
    )
    return "\n".join(lines) + "\n"


def settings_json(config: StackConfig, applied_by: Applier) -> str:
    document = {
        "appliedBy": applied_by,
        "how": how_applied(applied_by, config),
        "settings": [asdict(pref) for pref in desired_prefs(config)],
    }
    return json.dumps(document, indent=2) + "\n"


def settings_output(config: StackConfig, applied_by: Applier) -> dict[str, object]:
    """The `plexSettings` stack output: each preference's id and value, and who applies them."""
    return {
        "appliedBy": applied_by,
        "how": how_applied(applied_by, config),
        "settings": {pref.id: pref.value for pref in desired_prefs(config)},
    }
