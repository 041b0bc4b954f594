"""Checkpoint files to networks: safe file reading, kind detection, one loader per network."""
