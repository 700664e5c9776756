"""Labs that run the rendered artifacts for real, in network namespaces on this machine."""
