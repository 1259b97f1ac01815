"""Fuzz tests: hostile input over REST and gRPC against a fleet on port 0."""
