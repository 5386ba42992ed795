-- name: server_connections
-- What the server allows and what is in use now. Only client backends take a
-- max_connections slot (autovacuum and background workers have slots of their own);
-- superuser_reserved_connections, and reserved_connections from PostgreSQL 16 on, are
-- kept for roles we do not run as.
SELECT current_setting('max_connections')::int AS max_connections,
       current_setting('superuser_reserved_connections')::int
         + COALESCE(NULLIF(current_setting('reserved_connections', true), '')::int, 0)
         AS reserved,
       (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend')::int
         AS in_use;
