"""Placeholder: filled in by the backbone work (registers no converter yet)."""
