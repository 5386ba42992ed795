"""PostgreSQL: pool, embedded server, migrations, queries and repositories."""
