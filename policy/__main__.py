"""plex-cdn's policy pack. Pulumi starts it for `pulumi preview --policy-pack policy` (and `up`).

Pulumi runs this file as a script from the pack's own virtualenv (policy/venv, from policy/requirements.txt),
with only the pack's directory on sys.path. The VM price table lives in the project (`plexcdn.regions`,
standard library only), so the project root is put on sys.path before the policies are imported.
"""

from __future__ import annotations

import sys
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    if str(PROJECT_ROOT) not in sys.path:
        sys.path.insert(0, str(PROJECT_ROOT))

    import pulumi
    from pulumi_policy import EnforcementLevel, PolicyPack

    from policy.plexcdn_policies import POLICY_PACK_NAME, build_policies, regions_price_lookup

    PolicyPack(
        name=POLICY_PACK_NAME,
        enforcement_level=EnforcementLevel.MANDATORY,
        policies=build_policies(regions_price_lookup(), pulumi.get_stack),
    )


if __name__ == "__main__":
    main()
