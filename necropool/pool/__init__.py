"""A pool: its definition and paths, transactions over its state, its mirror and the
work rescued from its slots."""
