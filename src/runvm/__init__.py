"""runvm: an OCI container runtime that runs every pod in its own lightweight VM."""

__version__ = "0.1.0"
