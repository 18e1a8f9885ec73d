"""The PostgreSQL ledger as a store: connections, schema, host registration, rows."""
