-- Books that prove their history (issue 19, part 1): every ledger entry, and every wallet entry, commits
-- to the one before it of the same person, in a hash chain per account. A row changed, deleted or
-- reordered afterwards breaks the chain at that row, whatever the balances were adjusted to; `gongji
-- audit --chain` recomputes every chain and names the first entry that does not fit.
--
-- Per account, not one global chain: every path that writes a person's entry holds that person's
-- account (or wallet) row lock already, so each chain is written in one order without a lock of its
-- own, and entries of different people never wait for each other; a global chain would serialize every
-- settlement of the service on its head. The hash is computed by a trigger in the transaction that
-- writes the entry: no round trip more.
--
-- The link's definition must never change: a change would break every chain written before it (a new
-- definition would be a new column and a new migration). It is written here, to build the chains of the
-- entries of before, and again in store/sql/chain.sql, identical, with the trigger that links new entries
-- (code files hold every function, as every gongji function may be dropped and applied again from them).
set local lock_timeout = '10s';

-- An entry's link: sha256 of the previous link of its person ('' for the first) and the entry's content:
-- every column but the link itself, in a fixed order, separated by a character no value holds (US), a
-- null written as another (RS), so that no two contents read the same.
create function gongji_ledger_link(p_prev bytea, e ledger_entry) returns bytea
language sql immutable parallel safe
as $$
    select sha256(coalesce(p_prev, '') || convert_to(array_to_string(array[
        'ledger', e.entry_id::text, e.person_id, e.amount_fen::text, e.balance_after_fen::text, e.kind,
        e.settlement_id::text, e.credit_id::text, e.counterpart_id,
        ((extract(epoch from e.created_at) * 1000000)::bigint)::text, e.refund_id::text, e.note,
        e.premium_payment_id::text, e.transfer_id::text, e.hold_id::text], chr(31), chr(30)), 'UTF8'))
$$;

create function gongji_wallet_link(p_prev bytea, e wallet_entry) returns bytea
language sql immutable parallel safe
as $$
    select sha256(coalesce(p_prev, '') || convert_to(array_to_string(array[
        'wallet', e.entry_id::text, e.person_id, e.amount_fen::text, e.balance_after_fen::text, e.kind,
        e.transfer_id::text, e.counterpart_id, ((extract(epoch from e.created_at) * 1000000)::bigint)::text,
        e.settlement_id::text, e.refund_id::text, e.hold_id::text], chr(31), chr(30)), 'UTF8'))
$$;

alter table ledger_entry add column link bytea;
alter table wallet_entry add column link bytea;

-- The existing entries' chains, built once, person by person in entry order.
do $$
declare
    e       ledger_entry;
    w       wallet_entry;
    v_who   text;
    v_prev  bytea;
begin
    for e in select * from ledger_entry order by person_id, entry_id loop
        if e.person_id is distinct from v_who then
            v_who := e.person_id;
            v_prev := null;
        end if;
        v_prev := gongji_ledger_link(v_prev, e);
        update ledger_entry x set link = v_prev where x.entry_id = e.entry_id;
    end loop;
    v_who := null;
    for w in select * from wallet_entry order by person_id, entry_id loop
        if w.person_id is distinct from v_who then
            v_who := w.person_id;
            v_prev := null;
        end if;
        v_prev := gongji_wallet_link(v_prev, w);
        update wallet_entry x set link = v_prev where x.entry_id = w.entry_id;
    end loop;
end
$$;

alter table ledger_entry alter column link set not null;
alter table wallet_entry alter column link set not null;
