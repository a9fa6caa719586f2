"""Pure rules of the domain: no I/O, no asyncpg, no grpc. Tested without a database."""
