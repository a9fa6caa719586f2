-- Announce new credentials too (issue 12). Each server process keeps the hashes of every live token in
-- memory while it listens (gongji.api.credential_watch), so that a flood of made-up tokens is refused
-- without a look-up in the database each; a new credential must reach that set at once.
create function gongji_credential_created() returns trigger
language plpgsql
as $$
begin
    perform pg_notify('gongji_credential', new.credential_id::text);
    return null;
end
$$;

create trigger credential_created
    after insert on credential
    for each row execute function gongji_credential_created();
