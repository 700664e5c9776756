"""plex-cdn's Pulumi ComponentResources, one a module; the pure logic they use lives in `plexcdn`."""
