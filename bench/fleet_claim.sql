-- pgbench script for bench/fleet.py and bench/fleet_scale.py: the ledger's claim transaction
-- as store/pg/store.PgStore.claim sends it, in two messages (two round trips): its BEGIN with
-- the bounds, the schema check and the first free slot of the host in allocation order
-- (host row FOR SHARE, slot row FOR UPDATE SKIP LOCKED), then the grant, its event and the
-- COMMIT; then the release as one UPDATE. Client c works on host (c % hosts) + 1, as the
-- benches' allocators do (never more claimers on a host than it has slots). The query is
-- wrapped to return a row (number 0, which the UPDATE misses) when it finds no free slot:
-- with as many claimers as slots, a slot freed after the query's snapshot is not seen
-- while the others are locked, and pgbench would abort the client (necropool's claim
-- answers "none free" then, and an allocate that waits looks again).
\set h :client_id % :hosts + 1
BEGIN \; SET LOCAL TimeZone = 'UTC' \; SET LOCAL statement_timeout = 10000 \;
SET LOCAL lock_timeout = 10000 \; SET LOCAL idle_in_transaction_session_timeout = 10000 \;
SELECT coalesce(max(version), 0) AS version FROM necropool_schema \;
WITH free AS (SELECT now() AS server_now, s.number FROM hosts h JOIN slots s USING (pool, host)
  WHERE h.pool = 'web' AND h.host = 'host-' || lpad(:h::text, 2, '0')
  AND s.state = 'available' AND s.number <> ALL('{}'::integer[])
  ORDER BY needs_cleanup, last_released_at DESC NULLS LAST, number
  LIMIT 1 FOR SHARE OF h FOR UPDATE OF s SKIP LOCKED)
SELECT now() AS server_now, coalesce((SELECT number FROM free), 0) AS number \gset
UPDATE slots SET state = 'allocated', lease_id = md5(random()::text || clock_timestamp()),
  owner = 'pgbench', holder_pid = pg_backend_pid(), allocated_at = now(),
  expires_at = now() + make_interval(secs => NULL), metadata = '{}'::jsonb, worker = NULL,
  error = NULL, allocation_count = allocation_count + 1, last_allocated_at = now(),
  generation = generation + 1
  WHERE pool = 'web' AND host = 'host-' || lpad(:h::text, 2, '0') AND number = :number
  RETURNING * \;
INSERT INTO events (pool, host, name, fields) VALUES ('web', 'host-' || lpad(:h::text, 2, '0'),
  'allocate', jsonb_build_object('slot_id', 'web-' || :number, 'owner', 'pgbench')) \;
COMMIT;
UPDATE slots SET state = 'available', lease_id = NULL, owner = NULL, holder_pid = NULL,
  allocated_at = NULL, expires_at = NULL, last_released_at = now(),
  generation = generation + 1
  WHERE pool = 'web' AND host = 'host-' || lpad(:h::text, 2, '0') AND number = :number;
