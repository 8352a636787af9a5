"""Placeholder: filled in by the backbone work (registers nothing yet)."""
