"""The ground floor: time, errors, validation, the on-disk layout, locks, processes,
settings and result records; it imports nothing else of necropool."""
