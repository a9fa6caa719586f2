"""PostgreSQL through asyncpg: the pool, migrations, queries and the locking discipline."""
