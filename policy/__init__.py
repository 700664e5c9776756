"""plex-cdn's policy pack: `pulumi preview --policy-pack policy` runs `policy/__main__.py`."""
