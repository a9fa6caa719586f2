-- Verifying the books' hash chains (migration 0019 writes them): each person's ledger entries, and wallet
-- entries, are recomputed in entry order from the first, and the first entry of each chain whose link
-- does not fit is answered: the entry changed, the one before it deleted or changed, or the two
-- reordered. Chains that fit answer nothing. `gongji audit --chain` runs it; it reads every entry once,
-- so it is an operator's check, not one for every request.
--
-- Code, not history: re-applied by the migration runner whenever this file changes (see settle.sql). But
-- the two link functions must never change, whatever else here does: every chain written is computed
-- with them (migration 0019 wrote the same, to build the chains of the entries of before).

-- An entry's link: sha256 of the previous link of its person ('' for the first) and the entry's content:
-- every column but the link itself, in a fixed order, separated by a character no value holds (US), a
-- null written as another (RS), so that no two contents read the same.
create or replace function gongji_ledger_link(p_prev bytea, e ledger_entry) returns bytea
language sql immutable parallel safe
as $$
    select sha256(coalesce(p_prev, '') || convert_to(array_to_string(array[
        'ledger', e.entry_id::text, e.person_id, e.amount_fen::text, e.balance_after_fen::text, e.kind,
        e.settlement_id::text, e.credit_id::text, e.counterpart_id,
        ((extract(epoch from e.created_at) * 1000000)::bigint)::text, e.refund_id::text, e.note,
        e.premium_payment_id::text, e.transfer_id::text, e.hold_id::text], chr(31), chr(30)), 'UTF8'))
$$;

create or replace function gongji_wallet_link(p_prev bytea, e wallet_entry) returns bytea
language sql immutable parallel safe
as $$
    select sha256(coalesce(p_prev, '') || convert_to(array_to_string(array[
        'wallet', e.entry_id::text, e.person_id, e.amount_fen::text, e.balance_after_fen::text, e.kind,
        e.transfer_id::text, e.counterpart_id, ((extract(epoch from e.created_at) * 1000000)::bigint)::text,
        e.settlement_id::text, e.refund_id::text, e.hold_id::text], chr(31), chr(30)), 'UTF8'))
$$;

-- New entries link to the newest entry of their person. The caller holds the person's account (wallet)
-- row lock, taken by the UPDATE of the balance that comes before every entry, so the newest entry read
-- here is the chain's head, committed or this transaction's own.
create or replace function gongji_link_ledger_entry() returns trigger
language plpgsql
as $$
begin
    new.link := gongji_ledger_link(
        (select l.link from ledger_entry l where l.person_id = new.person_id order by l.entry_id desc limit 1), new);
    return new;
end
$$;

create or replace function gongji_link_wallet_entry() returns trigger
language plpgsql
as $$
begin
    new.link := gongji_wallet_link(
        (select w.link from wallet_entry w where w.person_id = new.person_id order by w.entry_id desc limit 1), new);
    return new;
end
$$;

create or replace trigger ledger_entry_link before insert on ledger_entry
    for each row execute function gongji_link_ledger_entry();
create or replace trigger wallet_entry_link before insert on wallet_entry
    for each row execute function gongji_link_wallet_entry();

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

-- Checkpoints (gongji.checkpoints): the head of every chain, its entry and link, and how many entries the
-- chain holds up to it, read in one snapshot. A signed copy kept elsewhere proves later that none of these
-- entries, nor any before them, was changed, deleted or the chain rebuilt: gongji_checkpoint_misfits.
-- The heads name entries, never people: a checkpoint carries no personal data.
create or replace function gongji_chain_heads()
returns table (book text, entry_id bigint, entries bigint, link bytea)
language sql stable
as $$
    select 'ledger', l.entry_id, c.entries, l.link
      from (select max(x.entry_id) as head, count(*) as entries from ledger_entry x group by x.person_id) c
      join ledger_entry l on l.entry_id = c.head
    union all
    select 'wallet', w.entry_id, c.entries, w.link
      from (select max(x.entry_id) as head, count(*) as entries from wallet_entry x group by x.person_id) c
      join wallet_entry w on w.entry_id = c.head
    order by 1, 2
$$;

-- The heads of a checkpoint that the books no longer hold as they were: MISSING, the entry is gone (the
-- newest entries of its chain deleted, and the balance adjusted to match, is the tampering a chain alone
-- cannot show); REWRITTEN, its link differs (this entry or one before it was changed and the chain built
-- again after it); COUNT, its chain holds another number of entries up to it (one before it deleted or
-- inserted). gongji_chain_breaks answers the rest: a chain that no longer fits its own entries.
create or replace function gongji_checkpoint_misfits(
    p_book text[], p_entry_id bigint[], p_entries bigint[], p_link bytea[])
returns table (book text, entry_id bigint, person_id text, why text)
language sql stable
as $$
    select h.book, h.entry_id, e.person_id,
           case when e.person_id is null then 'MISSING' when e.link <> h.link then 'REWRITTEN' else 'COUNT' end
      from unnest(p_book, p_entry_id, p_entries, p_link) as h (book, entry_id, entries, link)
      left join lateral (
           select l.person_id, l.link,
                  (select count(*) from ledger_entry x where x.person_id = l.person_id and x.entry_id <= l.entry_id) n
             from ledger_entry l where h.book = 'ledger' and l.entry_id = h.entry_id
           union all
           select w.person_id, w.link,
                  (select count(*) from wallet_entry x where x.person_id = w.person_id and x.entry_id <= w.entry_id)
             from wallet_entry w where h.book = 'wallet' and w.entry_id = h.entry_id) e on true
     where e.person_id is null or e.link <> h.link or e.n <> h.entries
     order by 1, 2
$$;
