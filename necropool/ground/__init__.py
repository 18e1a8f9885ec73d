"""Kernel-facing primitives that import nothing from necropool, so they can move freely."""
