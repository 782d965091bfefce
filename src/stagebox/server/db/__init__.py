"""The catalog database."""
