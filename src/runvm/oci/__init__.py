"""OCI runtime-spec documents: parse and validate with limits, no side effects.

Shared by host and guest: the guest parses what the host sends with the same rules.
"""

from runvm.oci.spec import MAX_SPEC_BYTES, load_spec, parse_process, parse_spec

__all__ = ["MAX_SPEC_BYTES", "load_spec", "parse_process", "parse_spec"]
