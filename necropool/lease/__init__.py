"""Leases: allocate, release, renew and run, and the slot refresh they share."""
