"""The runvm command line: runc-compatible verbs plus runvm's own (check, image, demo)."""
