"""Route53 for one POP: its latency-routed answer for the shared name, guarded by a health check, and
its own name used for POP-to-POP hops."""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from plexcdn.render import HEALTH_PATH

RECORD_TTL = 60


@dataclass(frozen=True)
class LatencyDnsArgs:
    zone_id: pulumi.Input[str]
    shared_name: str
    pop_name: str
    set_identifier: str
    aws_region: str
    ipv4: pulumi.Input[str]
    ipv6: pulumi.Input[str]
    serving: pulumi.Resource  # the POP's deploy: its records wait for it, so DNS never names a POP that cannot serve


class LatencyDns(pulumi.ComponentResource):
    health_check_id: pulumi.Output[str]

    def __init__(self, name: str, args: LatencyDnsArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("plex-cdn:latency_dns:LatencyDns", name, None, opts)
        child = pulumi.ResourceOptions(parent=self, depends_on=[args.serving])
        health = aws.route53.HealthCheck(
            f"{name}-health",
            type="HTTP",
            ip_address=args.ipv4,
            fqdn=args.pop_name,
            port=80,
            resource_path=HEALTH_PATH,
            request_interval=30,
            failure_threshold=3,
            tags={"Name": f"plex-cdn {args.pop_name}"},
            opts=child,
        )
        self.health_check_id = health.id
        for record_type, address in (("A", args.ipv4), ("AAAA", args.ipv6)):
            suffix = record_type.lower()
            aws.route53.Record(
                f"{name}-shared-{suffix}",
                zone_id=args.zone_id,
                name=args.shared_name,
                type=record_type,
                ttl=RECORD_TTL,
                records=[address],
                set_identifier=args.set_identifier,
                latency_routing_policies=[aws.route53.RecordLatencyRoutingPolicyArgs(region=args.aws_region)],
                health_check_id=health.id,
                opts=child,
            )
            aws.route53.Record(
                f"{name}-own-{suffix}",
                zone_id=args.zone_id,
                name=args.pop_name,
                type=record_type,
                ttl=RECORD_TTL,
                records=[address],
                opts=child,
            )
        self.register_outputs({"health_check_id": self.health_check_id})
