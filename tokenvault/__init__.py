"""tokenvault: a distributed token vault."""
