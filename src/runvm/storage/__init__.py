"""Host-side storage: the per-sandbox shared directory and the virtiofsd that serves it."""
