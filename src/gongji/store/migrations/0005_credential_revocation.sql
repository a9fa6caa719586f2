-- When each credential last authenticated a call (issue 12): each server process remembers uses in
-- memory and writes them in one batched UPDATE at most every CREDENTIAL_LAST_USED_FLUSH_S (limits.py),
-- so this is behind by up to that much. Null: never used since this column exists. The triggers that
-- announce credential changes, for revocation to take effect at once, are code:
-- store/sql/credentials.sql.
alter table credential add column last_used_at timestamptz;
