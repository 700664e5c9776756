"""The POP tree: who relays to whom, which POPs are hubs, and in what order requests travel; and the rules the
tree must keep, which the stack's validation runs with every other setting (plexcdn.config)."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Literal

from plexcdn import regions
from plexcdn.setting_kinds import Problem, one_of, shown

if TYPE_CHECKING:
    from plexcdn.config import OriginConfig, PopConfig, StackConfig

# The upstream of a hub: the Plex server.
ORIGIN: Final = "origin"


@dataclass(frozen=True)
class PopPlace:
    pop: PopConfig
    role: Literal["hub", "edge"]
    path_to_origin: tuple[str, ...]  # this POP's name, then each upstream POP's, ending before the origin
    # POPs that connect on the peer port: those whose upstream is this one, and those that fall back to it
    downstream: tuple[str, ...]
    depth: int  # the longest way to the origin through upstreams and fallbacks, in POPs

    @property
    def hops(self) -> int:
        return len(self.path_to_origin)

    @property
    def fallback(self) -> str | None:
        return self.pop.fallback

    @property
    def relays_to(self) -> tuple[str, ...]:
        """The POPs this one sends requests to: its upstream POP, then its fallback; none for a hub."""
        return relays_to(self.pop)


def relays_to(pop: PopConfig) -> tuple[str, ...]:
    return tuple(way for way in (pop.upstream, pop.fallback) if way is not None and way != ORIGIN)


def _depth(config: StackConfig, name: str) -> int:
    return 1 + max((_depth(config, way) for way in relays_to(config.pop(name))), default=0)


def place(config: StackConfig, name: str) -> PopPlace:
    pop = config.pop(name)
    path = [pop.name]
    current = pop.upstream
    while current != ORIGIN:
        path.append(current)
        current = config.pop(current).upstream
    downstream = tuple(p.name for p in config.pops if name in (p.upstream, p.fallback))
    return PopPlace(pop, "hub" if pop.upstream == ORIGIN else "edge", tuple(path), downstream, _depth(config, name))


def places(config: StackConfig) -> tuple[PopPlace, ...]:
    """Every POP's place, hubs first, then by distance from the origin (through upstreams and fallbacks), so the
    POPs a POP relays to precede it."""
    return tuple(sorted((place(config, pop.name) for pop in config.pops), key=lambda p: (p.depth, p.pop.name)))


def hubs_of(pops: Sequence[PopConfig]) -> tuple[PopConfig, ...]:
    return tuple(pop for pop in pops if pop.upstream == ORIGIN)


def hubs(config: StackConfig) -> tuple[PopConfig, ...]:
    return hubs_of(config.pops)


# --- the rules -------------------------------------------------------------------------------------------------


def tree_problems(pops: Sequence[PopConfig]) -> Iterator[Problem]:
    """Unique names, upstreams that exist, no cycles, at least one hub; then the fallbacks, on a sound tree."""
    problems = list(_upstream_problems(pops))
    yield from problems
    if not problems:
        yield from fallback_problems(pops)


def _upstream_problems(pops: Sequence[PopConfig]) -> Iterator[Problem]:
    names = [pop.name for pop in pops]
    seen: set[str] = set()
    for index, pop in enumerate(pops):
        if pop.name in seen:
            yield Problem(
                ("pops", index, "name"), f"{shown(pop.name)} is used by another POP; POP names must be unique"
            )
        seen.add(pop.name)
    for index, pop in enumerate(pops):
        if pop.upstream != ORIGIN and pop.upstream not in names:
            yield Problem(
                ("pops", index, "upstream"), f"{shown(pop.upstream)} is not a POP; use 'origin' or {one_of(names)}"
            )
        elif pop.upstream == pop.name:
            yield Problem(("pops", index, "upstream"), "a POP cannot be its own upstream")
    upstream_of = {pop.name: pop.upstream for pop in pops}
    index_of = {pop.name: index for index, pop in enumerate(pops)}
    reported: set[frozenset[str]] = set()
    for pop in pops:
        chain: list[str] = []
        current = pop.name
        while current in upstream_of and current not in chain:
            chain.append(current)
            current = upstream_of[current]
        cycle = chain[chain.index(current) :] if current in chain else []
        if len(cycle) > 1 and frozenset(cycle) not in reported:
            reported.add(frozenset(cycle))
            yield Problem(
                ("pops", index_of[cycle[0]], "upstream"),
                f"upstream cycle {' -> '.join([*cycle, cycle[0]])}; every chain must end at 'origin'",
            )
    if pops and not hubs_of(pops):
        yield Problem(("pops",), "no POP has upstream 'origin': at least one hub POP must reach the Plex server")


def fallback_problems(pops: Sequence[PopConfig]) -> Iterator[Problem]:
    """A fallback is another way for an edge: a POP whose own way to the origin avoids the edge and its upstream,
    and no chain of upstreams and fallbacks comes back to where it started (nginx would pass requests around it)."""
    by_name = {pop.name: pop for pop in pops}

    def path(name: str) -> list[str]:
        chain: list[str] = []
        while name in by_name and name not in chain:
            chain.append(name)
            name = by_name[name].upstream
        return chain

    for index, pop in enumerate(pops):
        fallback = pop.fallback
        if fallback is None:
            continue
        where = ("pops", index, "fallback")
        others = [name for name in by_name if name not in (pop.name, pop.upstream)]
        if pop.upstream == ORIGIN:
            yield Problem(
                where,
                f"POP {pop.name!r} is a hub (upstream 'origin'): a fallback is an edge's second way to the origin; "
                "leave it out here, and give this POP as the fallback of the edges that should use it",
            )
        elif fallback not in by_name:
            yield Problem(where, f"{shown(fallback)} is not a POP; use {one_of(others)}")
        elif fallback in (pop.name, pop.upstream):
            what = "itself" if fallback == pop.name else "its upstream"
            yield Problem(where, f"{fallback!r} is {what}; use another POP: {one_of(others)}")
        else:
            through = [name for name in path(fallback) if name in (pop.name, pop.upstream)]
            if through:
                yield Problem(
                    where,
                    f"POP {fallback!r} reaches the origin through {' -> '.join(path(fallback))}, which passes "
                    f"{through[0]!r}, so it fails when this POP's way does; use a POP whose way to the origin "
                    f"avoids {pop.name!r} and {pop.upstream!r}, such as a second hub",
                )
    yield from _fallback_cycles(pops)


def _fallback_cycles(pops: Sequence[PopConfig]) -> Iterator[Problem]:
    ways = {pop.name: relays_to(pop) for pop in pops}
    index_of = {pop.name: index for index, pop in enumerate(pops)}
    done: set[str] = set()

    def visit(name: str, trail: list[str]) -> list[str]:
        if name in trail:
            return [*trail[trail.index(name) :], name]
        if name in done or name not in ways:
            return []
        for way in ways[name]:
            cycle = visit(way, [*trail, name])
            if cycle:
                return cycle
        done.add(name)
        return []

    for pop in pops:
        cycle = visit(pop.name, [])
        if cycle:
            yield Problem(
                ("pops", index_of[cycle[0]], "fallback"),
                f"upstreams and fallbacks go round: {' -> '.join(cycle)}; a request could be passed around it "
                "forever. Every way from a POP must end at 'origin'",
            )
            return


def origin_link_problems(origin: OriginConfig, pops: Sequence[PopConfig]) -> Iterator[Problem]:
    """A WireGuard link reaches one hub; a public link needs an origin the hubs can reach over the internet."""
    hubs = hubs_of(pops)
    if origin.link == "wireguard" and len(hubs) > 1:
        yield Problem(
            ("pops",),
            f"origin.link is wireguard, which gives one tunnel to one hub, but {', '.join(p.name for p in hubs)} "
            "all have upstream 'origin'; point all but one at that hub POP",
        )
    if origin.link == "public" and hubs:
        try:
            address = ipaddress.ip_address(origin.host)
        except ValueError:
            return
        if not address.is_global:
            yield Problem(
                ("origin", "host"),
                f"{origin.host} is not reachable from the internet, so hub POP {hubs[0].name!r} cannot reach it with "
                "origin.link public; give the public name or address, or use origin.link wireguard",
            )


def latency_region_problems(pops: Sequence[PopConfig]) -> Iterator[Problem]:
    """Each POP answers for the shared name with a latency record in its region's AWS region, and Route53
    takes one per AWS region: "You can only create one latency resource record set for each Amazon EC2
    Region" (the Route53 API model, ResourceRecordSet.Region, as in botocore's
    data/route53/2013-04-01/service-2.json and the API reference). A second POP there would be refused."""
    known = [p for p in pops if p.region in regions.PROVIDERS[p.provider].regions]
    taken = {p.region_info.aws_region for p in known}
    holder: dict[str, int] = {}
    for index, pop in enumerate(pops):
        table = regions.PROVIDERS[pop.provider]
        if pop.region not in table.regions:
            continue  # reported where the region is read
        aws_region = table.regions[pop.region].aws_region
        if aws_region not in holder:
            holder[aws_region] = index
            continue
        first = pops[holder[aws_region]]
        free = [
            slug
            for slug, region in table.regions.items()
            if region.aws_region not in taken and regions.serves_user_data(pop.provider, slug)
        ]
        nearest = regions.nearest_described(pop.provider, pop.region, free, lambda r: f"{r.city}, {r.aws_region}")
        yield Problem(
            ("pops", index, "region"),
            f"{pop.provider} {pop.region} ({table.regions[pop.region].city}) answers for the shared name in AWS "
            f"region {aws_region}, as pops[{holder[aws_region]}].region does (POP {first.name!r}, {first.provider} "
            f"{first.region}); Route53 allows one latency record per AWS region for a name, so it would refuse the "
            f"one of POP {pop.name!r}. Use a {pop.provider} region that maps to an AWS region no other POP uses, "
            f"nearest: {nearest}; or leave out one of the two: Route53 measures latency to AWS regions, so it could "
            "not tell them apart anyway",
        )
