"""KSM throttling: merge guests' identical pages hard while sandboxes start, then back off."""
