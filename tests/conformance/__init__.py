"""Conformance: a decoder written from proto/README.md alone, against the code, on recorded and mutated messages."""
