"""Shared test utilities (hand-built generators with known unit ↔ concept semantics)."""
