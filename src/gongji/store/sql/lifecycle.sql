-- Cancel (2208) and Reverse (2601): the current version of their server-side functions (code, re-applied
-- by the migration runner when this file changes; see settle.sql).

-- The accounts a refund (or its reversal) moves money on, given as the patient's and the authorizer's
-- person ids, null for one it does not touch: each at most once, in the order every money path locks
-- accounts in (ascending person_id, collation "C"), so that two of them never deadlock.
create or replace function gongji_in_key_order(p_first text, p_second text) returns setof text
language sql immutable
as $$
    select x from unnest(array[p_first, p_second]) as x where x is not null order by x collate "C"
$$;

-- Which sources a refund returns to: cash, then the authorizer's account, then the patient's wallet,
-- then the patient's own account (last drawn first, in the wallet's default place in the deduction
-- order; the same order whatever the region's, so that a refund never depends on a policy changed
-- since). gongji.domain.waterfall.refund_split is the reference; a property test proves the two agree.
-- The caller makes sure p_amount_fen is at most what is left in all four.
create or replace function gongji_refund_split(
    p_amount_fen bigint, p_own_left_fen bigint, p_mulaid_left_fen bigint, p_wallet_left_fen bigint,
    p_cash_left_fen bigint,
    out acct_pay_fen bigint, out acct_mulaid_pay_fen bigint, out wallet_pay_fen bigint, out psn_cash_pay_fen bigint)
language sql immutable parallel safe
as $$
    select p_amount_fen - c.cash - m.mulaid - w.wallet, m.mulaid, w.wallet, c.cash
      from (select least(p_amount_fen, p_cash_left_fen)) as c (cash),
           lateral (select least(p_amount_fen - c.cash, p_mulaid_left_fen)) as m (mulaid),
           lateral (select least(p_amount_fen - c.cash - m.mulaid, p_wallet_left_fen)) as w (wallet)
$$;

-- Refund p_amount_fen of a settlement whose row the caller holds FOR UPDATE; return the refund's id.
-- Money goes back even when the grant has ended since, or the account's person is no longer ACTIVE:
-- nothing is lost, and the ledger entry's note says so.
create or replace function gongji_apply_refund(p_settlement_id uuid, p_amount_fen bigint, p_kind text, p_request_id text)
returns uuid
language plpgsql
as $$
declare
    s       settlement;
    v_left  record;
    v_split record;
    v_pid   text;
    v_part  bigint;
    v_after bigint;
    v_note  text;
    v_id    constant uuid := gen_random_uuid();
begin
    select * into s from settlement x where x.settlement_id = p_settlement_id;
    -- What is left per source: a reversed refund's money went back where the settlement had put it.
    -- sum(bigint) is numeric: cast back, the amounts are bounded far below bigint's range.
    select (s.acct_pay_fen - coalesce(sum(r.acct_pay_fen), 0))::bigint as own,
           (s.acct_mulaid_pay_fen - coalesce(sum(r.acct_mulaid_pay_fen), 0))::bigint as mulaid,
           (s.wallet_pay_fen - coalesce(sum(r.wallet_pay_fen), 0))::bigint as wallet,
           (s.psn_cash_pay_fen - coalesce(sum(r.psn_cash_pay_fen), 0))::bigint as cash
      into v_left
      from refund r where r.settlement_id = p_settlement_id and r.reversed_at is null;
    assert p_amount_fen > 0 and p_amount_fen <= v_left.own + v_left.mulaid + v_left.wallet + v_left.cash;
    select * into v_split from gongji_refund_split(p_amount_fen, v_left.own, v_left.mulaid, v_left.wallet, v_left.cash);
    assert v_split.acct_pay_fen between 0 and v_left.own;

    insert into refund (refund_id, settlement_id, institution_id, request_id, kind, amount_fen, acct_pay_fen,
                        acct_mulaid_pay_fen, wallet_pay_fen, psn_cash_pay_fen)
    values (v_id, s.settlement_id, s.institution_id, p_request_id, p_kind, p_amount_fen, v_split.acct_pay_fen,
            v_split.acct_mulaid_pay_fen, v_split.wallet_pay_fen, v_split.psn_cash_pay_fen);

    -- The wallet before the accounts, the order every money path takes them in (gongji_lock_accounts).
    if v_split.wallet_pay_fen > 0 then
        perform gongji_wallet_move(s.patient_id, v_split.wallet_pay_fen,
                                   case p_kind when 'CANCEL' then 'REFUND' else 'REVERSAL' end, now(), s.settlement_id,
                                   v_id, null);
    end if;

    for v_pid in
        select gongji_in_key_order(case when v_split.acct_pay_fen > 0 then s.patient_id end,
                                   case when v_split.acct_mulaid_pay_fen > 0 then s.authorizer_id end)
    loop
        v_part := case when v_pid = s.patient_id then v_split.acct_pay_fen else v_split.acct_mulaid_pay_fen end;
        update account a set balance_fen = a.balance_fen + v_part, updated_at = now()
         where a.person_id = v_pid returning a.balance_fen into v_after;
        assert v_after is not null, 'a settled account exists';
        select nullif(concat_ws('; ',
                   case when v_pid = s.authorizer_id and g.status <> 'LIVE'
                        then 'mutual-aid grant ' || lower(g.status) || ' since the settlement' end,
                   case when p.status <> 'ACTIVE'
                        then 'account holder ' || lower(p.status) || ': refunded all the same' end), '')
          into v_note
          from person p left join mutual_aid_grant g on g.grant_id = s.grant_id
         where p.person_id = v_pid;
        insert into ledger_entry (person_id, amount_fen, balance_after_fen, kind, settlement_id, refund_id,
                                  counterpart_id, note)
        values (v_pid, v_part, v_after, case p_kind when 'CANCEL' then 'REFUND' else 'REVERSAL' end,
                s.settlement_id, v_id, case when v_pid = s.authorizer_id then s.patient_id end, v_note);
    end loop;
    -- Mutual aid refunded is given back to the caps of the year the settlement was made in; after the
    -- accounts, as in gongji_settle_write.
    if v_split.acct_mulaid_pay_fen > 0 then
        perform gongji_count_mutual_aid(s.grant_id, s.patient_id, gongji_china_year(s.created_at),
                                        -v_split.acct_mulaid_pay_fen);
    end if;
    update settlement x set refunded_fen = x.refunded_fen + p_amount_fen where x.settlement_id = s.settlement_id;
    return v_id;
end
$$;

-- 2208: refund p_amount_fen (0 = all that is left) of a settlement, idempotent on the Cancel's request id.
create or replace function gongji_cancel(
    p_institution_id text, p_request_id text, p_request_digest bytea, p_settlement_id uuid, p_amount_fen bigint)
returns table (outcome text, replayed boolean, refund_id uuid)
language plpgsql
as $$
#variable_conflict use_column
declare
    v_scope    constant text := 'cancel/' || p_institution_id;
    v_digest   bytea;
    v_existing uuid;
    s          settlement;
    v_amount   bigint;
begin
    perform pg_advisory_xact_lock(hashtextextended(v_scope || '/' || p_request_id, 0));
    -- A reversal by this request id came first (gongji_reverse_refund takes the same lock): refused,
    -- whether it undid this Cancel's refund or found nothing to undo.
    if exists (select 1 from refund_reversal v where v.institution_id = p_institution_id and v.request_id = p_request_id)
    then
        outcome := 'ALREADY_REVERSED'; return next; return;
    end if;
    select k.request_digest, k.resource_id into v_digest, v_existing
      from idempotency_key k where k.scope = v_scope and k.request_id = p_request_id;
    if found then
        outcome := case when v_digest = p_request_digest then 'OK' else 'IDEMPOTENCY_KEY_REUSED' end;
        replayed := true;
        refund_id := case when outcome = 'OK' then v_existing end;
        return next; return;
    end if;
    -- The settlement's row lock makes refunds of one settlement take turns.
    select * into s from settlement x where x.settlement_id = p_settlement_id for update;
    if not found then outcome := 'SETTLEMENT_NOT_FOUND'; return next; return; end if;
    if s.institution_id <> p_institution_id then outcome := 'INSTITUTION_MISMATCH'; return next; return; end if;
    if s.reversed_at is not null then outcome := 'ALREADY_REVERSED'; return next; return; end if;
    v_amount := case when p_amount_fen = 0 then s.amount_fen - s.refunded_fen else p_amount_fen end;
    if v_amount <= 0 or v_amount > s.amount_fen - s.refunded_fen then
        outcome := 'REFUND_EXCEEDS_SETTLEMENT'; return next; return;
    end if;
    refund_id := gongji_apply_refund(s.settlement_id, v_amount, 'CANCEL', p_request_id);
    insert into idempotency_key (scope, request_id, request_digest, resource_id)
    values (v_scope, p_request_id, p_request_digest, refund_id);
    outcome := 'OK';
    replayed := false;
    return next;
end
$$;

-- 2601: the POS never got an answer and reverses by the original request id. Takes gongji_settle's
-- lock for that id, so the original either committed before (and is undone whole) or comes after
-- (and is refused). Reversing twice answers the same.
create or replace function gongji_reverse(p_institution_id text, p_request_id text)
returns table (outcome text, undone boolean, settlement_id uuid, replayed boolean)
language plpgsql
as $$
#variable_conflict use_column
declare
    v_done   reversal;
    s        settlement;
    v_refund uuid;
begin
    perform pg_advisory_xact_lock(hashtextextended('settle/' || p_institution_id || '/' || p_request_id, 0));
    select * into v_done from reversal r where r.institution_id = p_institution_id and r.request_id = p_request_id;
    if found then
        outcome := 'OK'; undone := v_done.settlement_id is not null; settlement_id := v_done.settlement_id;
        replayed := true;
        return next; return;
    end if;
    select * into s from settlement x
     where x.institution_id = p_institution_id and x.request_id = p_request_id for update;
    if s.settlement_id is not null then
        if s.amount_fen > s.refunded_fen then
            v_refund := gongji_apply_refund(s.settlement_id, s.amount_fen - s.refunded_fen, 'REVERSAL', p_request_id);
        end if;
        update settlement x set reversed_at = now() where x.settlement_id = s.settlement_id;
    end if;
    insert into reversal (institution_id, request_id, settlement_id, refund_id)
    values (p_institution_id, p_request_id, s.settlement_id, v_refund);
    outcome := 'OK';
    undone := s.settlement_id is not null;
    settlement_id := s.settlement_id;
    replayed := false;
    return next;
end
$$;

-- Why a committed refund cannot be reversed, or null when it can. Twin:
-- gongji.domain.reversal.refund_reversal_refusal. 'ALREADY_REVERSED': its settlement was reversed
-- since, which gave back everything that was left, so there is nothing the refund's money could return
-- to. 'REFUND_ALREADY_SPENT': an account (or the wallet) the refund credited holds less than the
-- refund's part of it now (the money paid something else meanwhile); taking it back would push the
-- balance below zero, and gongji keeps no receivable for the cash it would then be owed. A null balance
-- is one the refund credited nothing (its part is 0).
create or replace function gongji_refund_reversal_refusal(
    p_settlement_reversed boolean, p_acct_pay_fen bigint, p_own_balance_fen bigint,
    p_acct_mulaid_pay_fen bigint, p_mulaid_balance_fen bigint, p_wallet_pay_fen bigint, p_wallet_balance_fen bigint)
returns text
language sql immutable parallel safe
as $$
    select case
        when p_settlement_reversed then 'ALREADY_REVERSED'
        when p_acct_pay_fen > coalesce(p_own_balance_fen, 0)
          or p_acct_mulaid_pay_fen > coalesce(p_mulaid_balance_fen, 0)
          or p_wallet_pay_fen > coalesce(p_wallet_balance_fen, 0) then 'REFUND_ALREADY_SPENT'
    end
$$;

-- Lock, FOR UPDATE, what a refund credited (those of its parts that are not zero): the patient's wallet
-- first, then the accounts in ascending person_id order, as everywhere; answer their balances (null: not
-- credited, not locked).
create or replace function gongji_lock_refunded_accounts(r refund, s settlement,
    out own_balance_fen bigint, out mulaid_balance_fen bigint, out wallet_balance_fen bigint)
language plpgsql
as $$
declare
    v_pid     text;
    v_balance bigint;
begin
    if r.wallet_pay_fen > 0 then
        select w.balance_fen into strict wallet_balance_fen from wallet w where w.person_id = s.patient_id for update;
    end if;
    for v_pid in
        select gongji_in_key_order(case when r.acct_pay_fen > 0 then s.patient_id end,
                                   case when r.acct_mulaid_pay_fen > 0 then s.authorizer_id end)
    loop
        select a.balance_fen into strict v_balance from account a where a.person_id = v_pid for update;
        if v_pid = s.patient_id then own_balance_fen := v_balance; else mulaid_balance_fen := v_balance; end if;
    end loop;
end
$$;

-- Take a refund's money back from the accounts it credited, which the caller locked and found holding
-- enough: a REFUND_REVERSAL ledger entry per account, the caps count the mutual aid again (for the
-- settlement's year, as the refund gave it back), the settlement's refunded_fen drops, the refund is
-- marked reversed. The caps may then count more than a cap allows, when settlements used the room the
-- refund had made: a cap limits what mutual aid pays next, it does not undo what was paid.
create or replace function gongji_take_refund_back(r refund, s settlement)
returns void
language plpgsql
as $$
declare
    v_pid   text;
    v_part  bigint;
    v_after bigint;
begin
    if r.wallet_pay_fen > 0 then
        perform gongji_wallet_move(s.patient_id, -r.wallet_pay_fen, 'REFUND_REVERSAL', now(), s.settlement_id,
                                   r.refund_id, null);
    end if;
    for v_pid in
        select gongji_in_key_order(case when r.acct_pay_fen > 0 then s.patient_id end,
                                   case when r.acct_mulaid_pay_fen > 0 then s.authorizer_id end)
    loop
        v_part := case when v_pid = s.patient_id then r.acct_pay_fen else r.acct_mulaid_pay_fen end;
        update account a set balance_fen = a.balance_fen - v_part, updated_at = now()
         where a.person_id = v_pid returning a.balance_fen into v_after;
        assert v_after >= 0, 'the caller found the refund''s part in the account';
        insert into ledger_entry (person_id, amount_fen, balance_after_fen, kind, settlement_id, refund_id,
                                  counterpart_id)
        values (v_pid, -v_part, v_after, 'REFUND_REVERSAL', s.settlement_id, r.refund_id,
                case when v_pid = s.authorizer_id then s.patient_id end);
    end loop;
    if r.acct_mulaid_pay_fen > 0 then
        perform gongji_count_mutual_aid(s.grant_id, s.patient_id, gongji_china_year(s.created_at),
                                        r.acct_mulaid_pay_fen);
    end if;
    update settlement x set refunded_fen = x.refunded_fen - r.amount_fen where x.settlement_id = s.settlement_id;
    update refund x set reversed_at = now() where x.refund_id = r.refund_id;
end
$$;

-- 2601 of a Cancel (2208): the POS never got the Cancel's answer and reverses by its request id. Takes
-- gongji_cancel's lock for that id, so the Cancel either committed before (and its refund is taken
-- back whole) or comes after (and is refused ALREADY_REVERSED). Reversing twice answers the same; a
-- refusal writes nothing, so a reversal refused REFUND_ALREADY_SPENT may succeed once the money is
-- back in the account.
create or replace function gongji_reverse_refund(p_institution_id text, p_request_id text)
returns table (outcome text, undone boolean, settlement_id uuid, refund_id uuid, replayed boolean)
language plpgsql
as $$
#variable_conflict use_column
declare
    v_done    refund_reversal;
    v_refund  refund;
    s         settlement;
    v_balance record;
begin
    perform pg_advisory_xact_lock(hashtextextended('cancel/' || p_institution_id || '/' || p_request_id, 0));
    select * into v_done from refund_reversal v where v.institution_id = p_institution_id and v.request_id = p_request_id;
    if found then
        select * into v_refund from refund x where x.refund_id = v_done.refund_id;
        outcome := 'OK'; undone := v_done.refund_id is not null; settlement_id := v_refund.settlement_id;
        refund_id := v_done.refund_id; replayed := true;
        return next; return;
    end if;
    select x.* into v_refund from idempotency_key k join refund x on x.refund_id = k.resource_id
     where k.scope = 'cancel/' || p_institution_id and k.request_id = p_request_id;
    if v_refund.refund_id is not null then
        -- The settlement's row lock makes this take turns with the settlement's other refunds.
        select * into s from settlement x where x.settlement_id = v_refund.settlement_id for update;
        select * into v_balance from gongji_lock_refunded_accounts(v_refund, s);
        outcome := gongji_refund_reversal_refusal(s.reversed_at is not null, v_refund.acct_pay_fen,
            v_balance.own_balance_fen, v_refund.acct_mulaid_pay_fen, v_balance.mulaid_balance_fen,
            v_refund.wallet_pay_fen, v_balance.wallet_balance_fen);
        if outcome is not null then return next; return; end if;
        perform gongji_take_refund_back(v_refund, s);
    end if;
    insert into refund_reversal (institution_id, request_id, refund_id)
    values (p_institution_id, p_request_id, v_refund.refund_id);
    outcome := 'OK'; undone := v_refund.refund_id is not null; settlement_id := v_refund.settlement_id;
    refund_id := v_refund.refund_id; replayed := false;
    return next;
end
$$;
