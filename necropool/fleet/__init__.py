"""The fleet: other hosts' slots through the ledger, and moving a pool in and out of it."""
