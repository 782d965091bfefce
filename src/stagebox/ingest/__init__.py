"""Bag ingest: the tar stream reader, the BagIt validator and profiles, and the
stages that take a bag from a receiving box through staging into storage."""
