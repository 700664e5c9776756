"""Friend-to-friend library sharing over a private IPFS swarm: keys, kubo's config and the host services."""
