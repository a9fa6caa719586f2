-- Credential changes announced to every server process (issue 12). A change of a credential row is
-- announced on channel 'gongji_credential' with the credential's id as payload ('*': all of them),
-- delivered at commit to every server process that listens (gongji.api.credential_watch), which then
-- drops what it cached and updates the hashes of the live tokens it holds. Money calls do not depend
-- on this: they check their credential inside their own transaction (gongji.store.settlements).
--
-- Code, not history: re-applied by the migration runner whenever this file changes (see settle.sql).

create or replace function gongji_credential_changed() returns trigger
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
create or replace trigger credential_changed
    after update of revoked_at, token_sha256, kind, institution_id, terminal_id on credential
    for each row
    when (old.revoked_at is distinct from new.revoked_at
          or old.token_sha256 is distinct from new.token_sha256
          or old.kind is distinct from new.kind
          or old.institution_id is distinct from new.institution_id
          or old.terminal_id is distinct from new.terminal_id)
    execute function gongji_credential_changed();

create or replace trigger credential_deleted
    after delete on credential
    for each row execute function gongji_credential_changed();

create or replace trigger credential_truncated
    after truncate on credential
    for each statement execute function gongji_credential_changed();

-- New credentials too: each process holds the hash of every live token, and refuses a token it does
-- not know without asking the database, so a new credential must reach it at once.
create or replace function gongji_credential_created() returns trigger
language plpgsql
as $$
begin
    perform pg_notify('gongji_credential', new.credential_id::text);
    return null;
end
$$;

create or replace trigger credential_created
    after insert on credential
    for each row execute function gongji_credential_created();
