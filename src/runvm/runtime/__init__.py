"""The runtime core: sandboxes (one VM each), containers and processes."""
