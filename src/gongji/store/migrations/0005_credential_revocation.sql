-- Revocation that takes effect at once (issue 12), and when each credential was last used.
--
-- Money calls check their credential inside their own transaction (gongji.store.settlements), so
-- they need nothing here. Every other call trusts the server's credential cache; a change of a
-- credential row is announced on channel 'gongji_credential' with the credential's id as payload
-- ('*': all of them), delivered at commit to every server process that listens, which then drops
-- what it cached (gongji.api.credential_watch).

-- When the credential last authenticated a call: each server process remembers uses in memory and
-- writes them in one batched UPDATE at most every CREDENTIAL_LAST_USED_FLUSH_S (limits.py), so this
-- is behind by up to that much. Null: never used since this column exists.
alter table credential add column last_used_at timestamptz;

create function gongji_credential_changed() returns trigger
language plpgsql
as $$
begin
    if tg_level = 'STATEMENT' then
        perform pg_notify('gongji_credential', '*');
    else
        perform pg_notify('gongji_credential', old.credential_id::text);
    end if;
    return null;
end
$$;

-- Only the columns a cached principal depends on: the flush of last_used_at announces nothing.
create trigger credential_changed
    after update of revoked_at, token_sha256, kind, institution_id, terminal_id on credential
    for each row
    when (old.revoked_at is distinct from new.revoked_at
          or old.token_sha256 is distinct from new.token_sha256
          or old.kind is distinct from new.kind
          or old.institution_id is distinct from new.institution_id
          or old.terminal_id is distinct from new.terminal_id)
    execute function gongji_credential_changed();

create trigger credential_deleted
    after delete on credential
    for each row execute function gongji_credential_changed();

create trigger credential_truncated
    after truncate on credential
    for each statement execute function gongji_credential_changed();
