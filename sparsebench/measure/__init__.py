"""Measurement primitives: timing, memory, FLOPs, accuracy. Small and pure where possible."""
