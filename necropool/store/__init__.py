"""Where a pool's state lives: the store interface, the state model, the TOML files
(the default) and the PostgreSQL ledger (pg/)."""
