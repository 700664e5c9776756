"""Transcode offload: a stand-in for Plex's transcoder that runs the real one on a slave over SSH."""
