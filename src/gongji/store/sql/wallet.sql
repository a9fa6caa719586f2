-- The 医保钱包: wallets and two-phase transfers into them (issue 18). A send, an accept or decline, and
-- the expiry work are one statement each; refusals are answered as an `outcome` reason (the same
-- reasons as gongji.errors) and write nothing, with one exception: an accept past the due time returns
-- the transfer to its sender (what the expiry work would do) and is then refused. Every decision about time takes the service's clock as
-- p_now (gongji.clock), never the database's now(): tests move it, and a replica late to the work
-- decides as if it had been on time.
--
-- A transfer resolves exactly once. Each way to resolve it (accept, decline, the expiry work) first
-- locks the transfer's row and reads its state under that lock; only a PENDING one moves money, in the
-- same transaction that ends its PENDING state. The sender's account is locked after the transfer's row,
-- and a send locks the account and never waits for a transfer's row: no two of them deadlock.
--
-- Code, not history: re-applied by the migration runner whenever this file changes (see settle.sql).

-- The wallet limits of a region's policy (its 统筹区's own, else its province's), each at its published
-- default where the policy does not say. The defaults are written here and in
-- gongji.domain.wallet.WalletPolicy, held to each other by tests/integration/test_twins.py.
create or replace function gongji_wallet_policy(
    p_region_code text, out relationships text[], out scope text, out sends_per_day integer,
    out send_max_fen bigint, out quiet_from time, out quiet_until time, out expires_at time)
language plpgsql stable
as $$
declare
    r region_policy;
begin
    r := gongji_region_policy(p_region_code);
    relationships := coalesce(r.wallet_relationships,
                              array['SPOUSE', 'PARENT', 'CHILD', 'SIBLING', 'GRANDPARENT', 'GRANDCHILD']);
    scope := coalesce(r.wallet_scope, 'NATIONAL');
    sends_per_day := coalesce(r.wallet_sends_per_day, 3);
    send_max_fen := coalesce(r.wallet_send_max_fen, 200000);
    quiet_from := coalesce(r.wallet_quiet_from, time '22:00');
    quiet_until := coalesce(r.wallet_quiet_until, time '06:00');
    expires_at := coalesce(r.wallet_expires_at, time '06:00');
end
$$;

-- Whether p_now (China time) is in the hours no transfer is sent: from p_from (included) to p_until
-- (excluded), over midnight when p_from is the later; none when they are equal. Twin:
-- gongji.domain.wallet.in_quiet_hours.
create or replace function gongji_transfer_quiet(p_now timestamptz, p_from time, p_until time) returns boolean
language sql immutable parallel safe
as $$
    select case when p_from = p_until then false
                when p_from < p_until then (p_now at time zone 'Asia/Shanghai')::time >= p_from
                                       and (p_now at time zone 'Asia/Shanghai')::time < p_until
                else (p_now at time zone 'Asia/Shanghai')::time >= p_from
                  or (p_now at time zone 'Asia/Shanghai')::time < p_until end
$$;

-- When a transfer sent at p_sent_at goes back to its sender if nobody accepted it: the next China
-- calendar day at p_expires_at, China time. Twin: gongji.domain.wallet.due_at.
create or replace function gongji_transfer_due(p_sent_at timestamptz, p_expires_at time) returns timestamptz
language sql immutable parallel safe
as $$
    select (((p_sent_at at time zone 'Asia/Shanghai')::date + 1) + p_expires_at) at time zone 'Asia/Shanghai'
$$;

-- Why a send may not be made, in the order the checks run, or null. Twin:
-- gongji.domain.wallet.send_refusal. People not enrolled are all-null rows; p_pending: the sender has a
-- PENDING transfer; p_sent_today: the sender's sends this China day; p_balance_fen: the sender's account.
create or replace function gongji_send_refusal(
    p_sender person, p_sender_has_account boolean, p_recipient person, p_wallet_open boolean, p_now timestamptz,
    p_quiet_from time, p_quiet_until time, p_send_max_fen bigint, p_amount_fen bigint, p_pending boolean,
    p_sent_today integer, p_sends_per_day integer, p_balance_fen bigint) returns text
language plpgsql immutable
as $$
begin
    return case
        when p_sender.person_id is null or p_recipient.person_id is null then 'PERSON_NOT_FOUND'
        when p_sender.status <> 'ACTIVE' then 'PERSON_NOT_ACTIVE'
        when p_sender.scheme <> 'EMPLOYEE' or not p_sender_has_account then 'NOT_EMPLOYEE_INSURED'
        when p_recipient.status <> 'ACTIVE' then 'PERSON_NOT_ACTIVE'
        when not p_wallet_open then 'WALLET_NOT_OPEN'
        when gongji_transfer_quiet(p_now, p_quiet_from, p_quiet_until) then 'TRANSFER_QUIET_HOURS'
        when p_amount_fen > p_send_max_fen then 'TRANSFER_OVER_LIMIT'
        when p_pending then 'TRANSFER_PENDING'
        when p_sent_today >= p_sends_per_day then 'TRANSFER_DAILY_LIMIT'
        when p_balance_fen < p_amount_fen then 'INSUFFICIENT_BALANCE'
    end;
end
$$;

-- Send p_amount_fen from p_sender_id's personal account to p_recipient_id's wallet, PENDING until the
-- recipient accepts. The relationship was judged before (gongji.store.wallets: the birth dates and the
-- sender's region policy); here, under the sender's account lock, what money and time decide. The
-- account lock makes one sender's sends take turns: the replay, the pending one, the day's count and
-- the balance are read after it. A request id seen before with the same recipient, amount and
-- relationship answers its transfer again (replayed); with other content, IDEMPOTENCY_KEY_REUSED.
--
-- The sender's pending transfer past its due time holds nothing back: a send that may go ahead returns
-- it first (EXPIRED), so that what the sender may do never waits on the expiry work. Its row is taken
-- SKIP LOCKED, since this statement holds the account's lock already and whoever holds the transfer's
-- row (an accept, a decline, the expiry work) may be waiting for the account: that one ends it, and the
-- send is refused TRANSFER_PENDING meanwhile. A refused send writes nothing: the transfer past due waits
-- for the expiry work.
create or replace function gongji_send_transfer(
    p_now timestamptz, p_request_id text, p_sender_id text, p_recipient_id text, p_relationship text,
    p_amount_fen bigint)
returns table (outcome text, replayed boolean, transfer wallet_transfer)
language plpgsql
as $$
#variable_conflict use_column
declare
    v_sender    person;
    v_recipient person;
    v_balance   bigint;
    v_policy    record;
    v_sent      integer;
    v_after     bigint;
    v_due       wallet_transfer;  -- the sender's pending transfer past its due time, its row locked
begin
    select a.balance_fen into v_balance from account a where a.person_id = p_sender_id for update;
    select * into transfer from wallet_transfer t where t.sender_id = p_sender_id and t.request_id = p_request_id;
    if found then
        replayed := true;
        outcome := case when (transfer.recipient_id, transfer.amount_fen, transfer.relationship)
                             = (p_recipient_id, p_amount_fen, p_relationship)
                        then 'OK' else 'IDEMPOTENCY_KEY_REUSED' end;
        return next; return;
    end if;
    replayed := false;
    select * into v_sender from person p where p.person_id = p_sender_id;
    select * into v_recipient from person p where p.person_id = p_recipient_id;
    v_policy := gongji_wallet_policy(v_sender.region_code);
    select count(*) into v_sent from wallet_transfer t
     where t.sender_id = p_sender_id and t.china_day = (p_now at time zone 'Asia/Shanghai')::date;
    select * into v_due from wallet_transfer t
     where t.sender_id = p_sender_id and t.state = 'PENDING' and t.due_at <= p_now for update skip locked;
    outcome := gongji_send_refusal(
        v_sender, v_balance is not null, v_recipient,
        exists (select 1 from wallet w where w.person_id = p_recipient_id), p_now, v_policy.quiet_from,
        v_policy.quiet_until, v_policy.send_max_fen, p_amount_fen,
        exists (select 1 from wallet_transfer t where t.sender_id = p_sender_id and t.state = 'PENDING'
                   and t.transfer_id is distinct from v_due.transfer_id), v_sent,
        v_policy.sends_per_day, v_balance + coalesce(v_due.amount_fen, 0));
    if outcome is not null then return next; return; end if;
    if v_due.transfer_id is not null then
        v_due := gongji_end_transfer(v_due, 'EXPIRED', p_now);
        v_balance := v_balance + v_due.amount_fen;
    end if;
    insert into wallet_transfer (transfer_id, sender_id, recipient_id, relationship, amount_fen, state, request_id,
                                 china_day, sent_at, due_at)
    values (gen_random_uuid(), p_sender_id, p_recipient_id, p_relationship, p_amount_fen, 'PENDING', p_request_id,
            (p_now at time zone 'Asia/Shanghai')::date, p_now, gongji_transfer_due(p_now, v_policy.expires_at))
    returning * into transfer;
    update account a set balance_fen = a.balance_fen - p_amount_fen, updated_at = p_now
     where a.person_id = p_sender_id returning a.balance_fen into v_after;
    assert v_after = v_balance - p_amount_fen and v_after >= 0;
    insert into ledger_entry (person_id, amount_fen, balance_after_fen, kind, transfer_id, counterpart_id, created_at)
    values (p_sender_id, -p_amount_fen, v_after, 'TRANSFER_OUT', transfer.transfer_id, p_recipient_id, p_now);
    outcome := 'OK';
    return next;
end
$$;

-- What accepting (p_accept) or declining a transfer in p_state, due at p_due, does at p_now: the state it
-- ends in, the refusal answered (null: none) and whether money moves now. Twin:
-- gongji.domain.wallet.resolution. A pending transfer past its due time goes back to its sender now,
-- whatever the call, and an accept is refused: the outcome never depends on when the expiry work runs.
create or replace function gongji_transfer_resolution(
    p_state text, p_due timestamptz, p_now timestamptz, p_accept boolean,
    out state text, out refusal text, out moves boolean)
language plpgsql immutable
as $$
begin
    if p_state = 'PENDING' then
        state := case when p_now >= p_due then 'EXPIRED' when p_accept then 'POSTED' else 'VOIDED' end;
        refusal := case when state = 'EXPIRED' and p_accept then 'TRANSFER_RESOLVED' end;
        moves := true;
        return;
    end if;
    state := p_state;
    moves := false;
    refusal := case when p_state = case when p_accept then 'POSTED' else 'VOIDED' end
                      or (not p_accept and p_state = 'EXPIRED') then null
                    else 'TRANSFER_RESOLVED' end;
end
$$;

-- End the PENDING transfer t (its row locked by the caller) in p_state at p_now, moving its money: into
-- the recipient's wallet when POSTED, back to the sender's account when VOIDED or EXPIRED. Answers the
-- transfer as it now is.
create or replace function gongji_end_transfer(t wallet_transfer, p_state text, p_now timestamptz)
returns wallet_transfer
language plpgsql
as $$
declare
    v_after bigint;
begin
    assert t.state = 'PENDING' and p_state in ('POSTED', 'VOIDED', 'EXPIRED');
    if p_state = 'POSTED' then
        update wallet w set balance_fen = w.balance_fen + t.amount_fen, updated_at = p_now
         where w.person_id = t.recipient_id returning w.balance_fen into v_after;
        insert into wallet_entry (person_id, amount_fen, balance_after_fen, kind, transfer_id, counterpart_id, created_at)
        values (t.recipient_id, t.amount_fen, v_after, 'TRANSFER_IN', t.transfer_id, t.sender_id, p_now);
    else
        update account a set balance_fen = a.balance_fen + t.amount_fen, updated_at = p_now
         where a.person_id = t.sender_id returning a.balance_fen into v_after;
        insert into ledger_entry (person_id, amount_fen, balance_after_fen, kind, transfer_id, counterpart_id,
                                  created_at)
        values (t.sender_id, t.amount_fen, v_after, 'TRANSFER_RETURN', t.transfer_id, t.recipient_id, p_now);
    end if;
    update wallet_transfer x set state = p_state, resolved_at = p_now
     where x.transfer_id = t.transfer_id and x.state = 'PENDING' returning * into t;
    assert found, 'the caller holds the pending transfer''s row';
    return t;
end
$$;

-- The recipient p_person_id accepts (p_accept) or declines transfer p_transfer_id at p_now
-- (gongji_transfer_resolution says what that does). Someone else's transfer, or none, is
-- TRANSFER_NOT_FOUND. replayed: the call found the outcome it asks for already there.
create or replace function gongji_resolve_transfer(
    p_now timestamptz, p_transfer_id uuid, p_person_id text, p_accept boolean)
returns table (outcome text, replayed boolean, transfer wallet_transfer)
language plpgsql
as $$
#variable_conflict use_column
declare
    v_end record;
begin
    select * into transfer from wallet_transfer t
     where t.transfer_id = p_transfer_id and t.recipient_id = p_person_id for update;
    if not found then
        outcome := 'TRANSFER_NOT_FOUND'; return next; return;
    end if;
    v_end := gongji_transfer_resolution(transfer.state, transfer.due_at, p_now, p_accept);
    replayed := not v_end.moves;
    if v_end.moves then
        transfer := gongji_end_transfer(transfer, v_end.state, p_now);
    end if;
    outcome := coalesce(v_end.refusal, 'OK');
    return next;
end
$$;

-- The expiry work: return to their senders at most p_limit PENDING transfers due by p_now, oldest due
-- first, and answer them. Rows another transaction holds (an accept or decline in flight, or another
-- replica's expiry) are skipped, not waited for: that one resolves them, and a replica never returns a
-- transfer twice (each is re-read under its row lock: gongji_end_transfer ends only a PENDING one). The
-- senders' accounts are then locked in key order ("C" collation), the order settlements and refunds lock
-- accounts in (gongji_lock_accounts, gongji_in_key_order), before any is written: a batch holding several
-- accounts never waits in a cycle with them.
create or replace function gongji_expire_transfers(p_now timestamptz, p_limit integer)
returns setof wallet_transfer
language plpgsql
as $$
declare
    v_due wallet_transfer[];
    t     wallet_transfer;
begin
    select array_agg(x order by x.due_at) into v_due
      from (select * from wallet_transfer x
             where x.state = 'PENDING' and x.due_at <= p_now
             order by x.due_at
             limit p_limit
               for update skip locked) x;
    if v_due is null then
        return;
    end if;
    perform 1 from account a
      where a.person_id = any(array(select d.sender_id from unnest(v_due) d))
      order by a.person_id collate "C"
        for update;
    foreach t in array v_due loop
        return next gongji_end_transfer(t, 'EXPIRED', p_now);
    end loop;
end
$$;
