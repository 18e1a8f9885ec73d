-- pgbench script for bench/fleet.py: the ledger's claim transaction (as store_pg.PgStore.claim
-- runs it: clock, host row FOR SHARE, first free slot FOR UPDATE SKIP LOCKED in allocation
-- order, grant), then the release as one UPDATE. Client c works on host (c % hosts) + 1,
-- as the bench's allocators do (hosts x threads clients: never more claimers than slots).
\set h :client_id % :hosts + 1
BEGIN;
SELECT now();
SELECT host FROM hosts WHERE pool = 'web' AND host = 'host-' || lpad(:h::text, 2, '0')
  FOR SHARE;
SELECT number FROM slots WHERE pool = 'web' AND host = 'host-' || lpad(:h::text, 2, '0')
  AND state = 'available' ORDER BY needs_cleanup, last_released_at DESC NULLS LAST, number
  LIMIT 1 FOR UPDATE SKIP LOCKED \gset
UPDATE slots SET state = 'allocated', lease_id = md5(random()::text || clock_timestamp()),
  owner = 'pgbench', holder_pid = pg_backend_pid(), allocated_at = now(),
  allocation_count = allocation_count + 1, last_allocated_at = now(),
  generation = generation + 1
  WHERE pool = 'web' AND host = 'host-' || lpad(:h::text, 2, '0') AND number = :number;
COMMIT;
UPDATE slots SET state = 'available', lease_id = NULL, owner = NULL, holder_pid = NULL,
  allocated_at = NULL, last_released_at = now(), generation = generation + 1
  WHERE pool = 'web' AND host = 'host-' || lpad(:h::text, 2, '0') AND number = :number;
