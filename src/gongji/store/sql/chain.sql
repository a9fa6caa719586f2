-- Verifying the books' hash chains (migration 0019 writes them): each person's ledger entries, and wallet
-- entries, are recomputed in entry order from the first, and the first entry of each chain whose link
-- does not fit is answered: the entry changed, the one before it deleted or changed, or the two
-- reordered. Chains that fit answer nothing. `gongji audit --chain` runs it; it reads every entry once,
-- so it is an operator's check, not one for every request.
--
-- Code, not history: re-applied by the migration runner whenever this file changes (see settle.sql).
-- The link's definition is history: gongji_ledger_link and gongji_wallet_link in migration 0019.
create or replace function gongji_chain_breaks()
returns table (book text, person_id text, entry_id bigint)
language plpgsql stable
as $$
#variable_conflict use_column
declare
    e       ledger_entry;
    w       wallet_entry;
    v_who   text;
    v_prev  bytea;
    v_found boolean;
begin
    for e in select * from ledger_entry x order by x.person_id, x.entry_id loop
        if e.person_id is distinct from v_who then
            v_who := e.person_id;
            v_prev := null;
            v_found := false;
        end if;
        if not v_found and e.link is distinct from gongji_ledger_link(v_prev, e) then
            book := 'ledger'; person_id := e.person_id; entry_id := e.entry_id; v_found := true;
            return next;
        end if;
        v_prev := e.link;
    end loop;
    v_who := null;
    for w in select * from wallet_entry x order by x.person_id, x.entry_id loop
        if w.person_id is distinct from v_who then
            v_who := w.person_id;
            v_prev := null;
            v_found := false;
        end if;
        if not v_found and w.link is distinct from gongji_wallet_link(v_prev, w) then
            book := 'wallet'; person_id := w.person_id; entry_id := w.entry_id; v_found := true;
            return next;
        end if;
        v_prev := w.link;
    end loop;
end
$$;
