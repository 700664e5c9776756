"""What a POP's rendered nginx config lets through, checked on the rendered text: which artwork may be cached
and shared, which client-address headers reach the next hop, what the health check asks and answers, and
what an error page names. tests/lab/test_relay.py runs the same rules on real nginx."""

from __future__ import annotations

import re

import pytest

from plexcdn import render, topology
from plexcdn.config import StackConfig
from tests.conftest import HOME_HOST_KEY, config_from, example_values, five_pop_values, wireguard_values


def _agent_config() -> StackConfig:
    values = example_values()
    values["origin"]["agent"] = {"listenPort": 32443, "sshHostKey": HOME_HOST_KEY}
    return config_from(values)


CONFIGS = {
    "example": lambda: config_from(example_values()),
    "five-pop": lambda: config_from(five_pop_values()),
    "wireguard": lambda: config_from(wireguard_values()),
    "agent": _agent_config,
}


def _map_patterns(maps: str, result: str) -> list[str]:
    """The regexes of the map that sets `result`, in order, as nginx reads them (quoted, `~*`: caseless)."""
    block = re.search(r"map \S+ \$" + result + r" \{\n(.*?)\n\}", maps, re.DOTALL)
    assert block is not None, result
    patterns = re.findall(r'^\s*"~\*(.*)"\s', block.group(1), re.MULTILINE)
    # PCRE names a group (?<name>...); Python's re wants (?P<name>...).
    return [re.sub(r"\(\?<(?=[a-z])", "(?P<", pattern) for pattern in patterns]


@pytest.fixture(scope="module")
def maps() -> str:
    return render.nginx_files(config_from(example_values()), "asia")["plexcdn-maps.conf"]


def _without_token(maps: str, args: str) -> str:
    """$plexcdn_args_without_token: the first regex that matches decides, as in an nginx map."""
    for pattern in _map_patterns(maps, "plexcdn_args_without_token"):
        match = re.search(pattern, args, re.IGNORECASE)
        if match:
            groups = match.groupdict()
            if "plexcdn_after_first" in groups:
                return groups["plexcdn_after_first"] or ""
            return f"{groups['plexcdn_before']}{groups['plexcdn_after']}"
    return args


def _is_public(maps: str, args: str) -> bool:
    (pattern,) = _map_patterns(maps, "plexcdn_artwork_public_query")
    return re.search(pattern, _without_token(maps, args), re.IGNORECASE) is not None


TMDB = "url=https%3A%2F%2Fimage.tmdb.org%2Ft%2Fp%2Fw300%2Fposter.jpg"


@pytest.mark.parametrize(
    "args",
    [
        f"width=300&{TMDB}",
        f"{TMDB}&width=300&height=450&X-Plex-Token=secret",
        f"X-Plex-Token=secret&width=300&{TMDB}",
        "url=https://metadata-static.plex.tv/7/people/abc.jpg&width=80",
        "url=http%3a%2f%2fartworks.thetvdb.com%2fbanners%2fposters%2f1.jpg",
        "url=https%3A%2F%2Fimages.plex.tv%2Fphoto%3Fsize%3Dmedium-360%26url%3Dhttps%253A%252F%252Fmetadata-static.plex.tv",
        "URL=https%3A%2F%2Fassets.fanart.tv%2Ffanart%2Fmovies%2F603%2Fposter.jpg&minSize=1&upscale=1",
    ],
)
def test_artwork_from_a_public_image_host_is_shared(maps: str, args: str) -> None:
    assert _is_public(maps, args)


@pytest.mark.parametrize(
    "args",
    [
        # the server's own library, by path or by any URL naming it
        "url=%2Flibrary%2Fmetadata%2F7%2Fthumb%2F1700000000&width=300",
        "url=http%3A%2F%2F127.0.0.1%3A32400%2Flibrary%2Fmetadata%2F7%2Fthumb&X-Plex-Token=secret",
        "url=http://localhost:32400/library/metadata/7/art",
        "url=https%3A%2F%2F192.168.1.10%3A32400%2Flibrary%2Fmetadata%2F7%2Fthumb",
        "url=https%3A%2F%2Fhome.example.net%3A32400%2Flibrary%2Fmetadata%2F7%2Fthumb",
        # a public host's name used as a prefix, a user part, a port, a trailing dot
        "url=https%3A%2F%2Fimage.tmdb.org.evil.example%2Fposter.jpg",
        "url=https%3A%2F%2Fimage.tmdb.org%40127.0.0.1%3A32400%2Flibrary%2Fmetadata%2F7%2Fthumb",
        "url=https%3A%2F%2Fimage.tmdb.org%3A443%2Fposter.jpg",
        "url=https%3A%2F%2Fimage.tmdb.org.%2Fposter.jpg",
        "url=https%3A%2F%2Fxn--image.tmdb.org%2Fposter.jpg",
        # a second url (any case, or with a percent-encoded name) that Plex might read instead
        f"{TMDB}&url=%2Flibrary%2Fmetadata%2F7%2Fthumb",
        f"{TMDB}&URL=%2Flibrary%2Fmetadata%2F7%2Fthumb",
        f"%75rl=%2Flibrary%2Fmetadata%2F7%2Fthumb&{TMDB}",
        f"{TMDB};url=%2Flibrary%2Fmetadata%2F7%2Fthumb",
        # a token anywhere but the one X-Plex-Token parameter, which would end up in the cache key
        f"{TMDB}%3FX-Plex-Token%3Dsecret",
        f"{TMDB}&X-Plex-Token=one&X-Plex-Token=two",
        f"{TMDB}&accessToken=secret",
        # nothing to go by
        "width=300",
        "",
    ],
)
def test_any_other_artwork_is_private(maps: str, args: str) -> None:
    assert not _is_public(maps, args)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ("X-Plex-Token=secret", ""),
        ("X-Plex-Token=secret&width=3", "width=3"),
        ("width=3&x-plex-token=secret&height=4", "width=3&height=4"),
        ("width=3&X-Plex-Token=secret", "width=3"),
        ("width=3", "width=3"),
    ],
)
def test_the_cache_key_query_loses_the_token(maps: str, args: str, expected: str) -> None:
    assert _without_token(maps, args) == expected


def test_only_public_artwork_is_looked_up_or_stored_and_its_key_holds_no_token_variable() -> None:
    locations = render.nginx_files(config_from(example_values()), "asia")["plexcdn-locations.conf"]
    artwork = locations.split("location /photo/:/transcode {")[1].split("\n}")[0]
    assert "proxy_cache_bypass $plexcdn_artwork_private;" in artwork
    assert "proxy_no_cache $plexcdn_artwork_private;" in artwork
    key = re.search(r'proxy_cache_key "([^"]*)";', artwork)
    assert key is not None
    assert "token" not in key.group(1).replace("$plexcdn_args_without_token", "")


# The families of headers that claim a client's address or how a request arrived.
CLAIMS = (
    "Forwarded",
    "X-Forwarded-For",
    "X-Real-IP",
    "X-Client-IP",
    "X-Cluster-Client-IP",
    "True-Client-IP",
    "CF-Connecting-IP",
    "Fastly-Client-IP",
    "X-Forwarded-Host",
    "X-Forwarded-Proto",
    "X-Forwarded-Port",
    "Client-IP",
)


@pytest.mark.parametrize("label", sorted(CONFIGS))
def test_every_client_address_header_is_replaced_or_emptied_at_every_hop(label: str) -> None:
    config = CONFIGS[label]()
    assert set(CLAIMS) <= set(render.CLIENT_ADDRESS_HEADERS)
    for place in topology.places(config):
        locations = render.nginx_files(config, place.pop.name)["plexcdn-locations.conf"]
        server_level = locations.split("location ")[0]
        sent = dict(re.findall(r"^proxy_set_header (\S+) (.+);$", server_level, re.MULTILINE))
        for header in render.CLIENT_ADDRESS_HEADERS:
            assert header in sent, (place.pop.name, header)
            assert (sent[header] == '""') == (header not in render.CLIENT_ADDRESS_HEADERS_SET), header
        # A location that set a header of its own would drop all of these (nginx inherits none of them then).
        assert "proxy_set_header" not in locations[len(server_level) :], place.pop.name


def test_the_health_check_sends_a_fixed_get_and_answers_with_a_status_only() -> None:
    files = render.nginx_files(config_from(example_values()), "asia")
    health = files["plexcdn-health.conf"]
    chain = files["nginx.conf"].split("location = /plexcdn/health-chain {")[1].split("}")[0]
    assert chain.split() == ["internal;", "include", "plexcdn-health.conf;"], "only the health check asks it"
    for line in (
        "proxy_method GET;",
        "proxy_pass_request_headers off;",
        "proxy_pass_request_body off;",
        "rewrite ^ /identity? break;",
    ):
        assert line in health.splitlines(), line
    port_80 = files["nginx.conf"].split("listen 80 default_server;")[1].split("listen 443")[0]
    public = port_80.split("location = /plexcdn/health {")[1].split("\n        }")[0]
    assert "auth_request /plexcdn/health-chain;" in public
    assert "proxy_pass" not in public and "include" not in public
    # Before the chain is asked: a certificate near expiry answers unhealthy on its own.
    expiring = f"if (-f {render.CERTIFICATE_STATE_DIR}/certificate-expiring) {{"
    assert public.index(expiring) < public.index("auth_request")
    assert 'return 503 "unhealthy\\n";' in public.split(expiring)[1].split("}")[0]


@pytest.mark.parametrize("label", sorted(CONFIGS))
def test_error_pages_name_no_address_host_or_port(label: str) -> None:
    config = CONFIGS[label]()
    addresses = render.placeholder_addresses(config)
    for place in topology.places(config):
        files = render.nginx_files(config, place.pop.name)
        upstream = render.upstream_of(config, place.pop.name, addresses)
        answers = re.findall(r'return \d+ "([^"]*)"', files["plexcdn-locations.conf"] + files["nginx.conf"])
        assert answers, place.pop.name
        host, _, port = upstream.server.rpartition(":")
        for answer in answers:
            for secret in (host, f":{port}", config.origin.host, *addresses.values()):
                assert secret not in answer, (place.pop.name, answer)
