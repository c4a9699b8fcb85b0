"""Host networking for sandboxes: network namespaces (and, later, taps and tc mirred)."""
