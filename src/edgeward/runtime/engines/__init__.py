"""Module engines: Docker Engine API (docker, moby, podman) and supervised host processes."""
