-- Quote (2206) and Settle (2207) as server-side functions, so that a settlement is one round trip:
-- the account rows stay locked only for the database's own work, never for a network hop.
-- Refusals are answered as an `outcome` reason (the same reasons as gongji.errors) and write nothing;
-- an outcome of 'OK' is the only one that changes data.
--
-- This file is code, not history: it always holds the current version, and the migration runner
-- applies it again whenever it changes (gongji.store.migrate), after the numbered migrations. A change
-- of a function's signature needs a `drop function` in a numbered migration first.

-- The waterfall of DOMAIN.md. gongji.domain.waterfall.split is the reference; a property test proves
-- the two agree. A null balance means "no such account" (resident patient, or no grant used).
create or replace function gongji_split(
    p_amount_fen bigint, p_own_balance_fen bigint, p_mulaid_balance_fen bigint, p_use_account boolean,
    out acct_pay_fen bigint, out acct_mulaid_pay_fen bigint, out psn_cash_pay_fen bigint)
language sql immutable parallel safe
as $$
    select o.own, m.mulaid, p_amount_fen - o.own - m.mulaid
      from (select case when p_use_account
                        then least(p_amount_fen, coalesce(p_own_balance_fen, 0)) else 0 end) as o (own),
           lateral (select case when p_use_account
                                then least(p_amount_fen - o.own, coalesce(p_mulaid_balance_fen, 0)) else 0 end)
               as m (mulaid)
$$;

-- Why a voucher row cannot settle for p_patient_id, or null when it can. An unknown voucher is an
-- all-null row. The real-name rule is checked before use and expiry: presenting someone else's
-- voucher is the fraud signal and must be counted as such.
--
-- A voucher a holder asked for a member is good only while the binding it was issued under lives:
-- after Unbind, the holder can no longer show the member's voucher, including one issued before, and
-- binding again does not bring back vouchers issued before the new binding.
create or replace function gongji_voucher_refusal(v voucher, p_patient_id text) returns text
language sql stable
as $$
    select case
        when v.voucher_id is null then 'VOUCHER_INVALID'
        when v.person_id <> p_patient_id then 'VOUCHER_PATIENT_MISMATCH'
        when v.used_at is not null then 'VOUCHER_ALREADY_USED'
        when v.expires_at <= now() then 'VOUCHER_EXPIRED'
        when v.requester_id <> v.person_id and not exists (
            select 1 from kinship_binding b
             where b.holder_id = v.requester_id and b.member_id = v.person_id and b.ended_at is null
               and b.created_at <= v.issued_at)
            then 'VOUCHER_INVALID'
    end
$$;

-- The grant a settlement of p_beneficiary_id would draw on: the named authorizer's, or the oldest
-- live one. The authorizer must still be an active employee-insured person.
create or replace function gongji_live_grant(p_beneficiary_id text, p_authorizer_id text) returns bigint
language sql stable
as $$
    select g.grant_id
      from mutual_aid_grant g
      join person a on a.person_id = g.authorizer_id
     where g.beneficiary_id = p_beneficiary_id
       and g.status = 'LIVE'
       and (p_authorizer_id is null or g.authorizer_id = p_authorizer_id)
       and a.status = 'ACTIVE' and a.scheme = 'EMPLOYEE'
     order by g.created_at, g.grant_id
     limit 1
$$;

create or replace function gongji_quote(
    p_voucher_id uuid, p_patient_id text, p_amount_fen bigint, p_authorizer_id text, p_use_account boolean)
returns table (
    outcome text, authorizer_id text, acct_pay_fen bigint, acct_mulaid_pay_fen bigint,
    psn_cash_pay_fen bigint, balc_fen bigint)
language plpgsql stable
as $$
#variable_conflict use_column
declare
    v_patient    person;
    v_voucher    voucher;
    v_grant      bigint;
    v_authorizer text;
    v_own        bigint;
    v_mulaid     bigint;
    v_split      record;
begin
    select * into v_patient from person p where p.person_id = p_patient_id;
    if not found then outcome := 'PERSON_NOT_FOUND'; return next; return; end if;
    select * into v_voucher from voucher v where v.voucher_id = p_voucher_id;
    outcome := gongji_voucher_refusal(v_voucher, p_patient_id);
    if outcome is not null then return next; return; end if;
    if v_patient.status <> 'ACTIVE' then outcome := 'PERSON_NOT_ACTIVE'; return next; return; end if;
    if p_use_account then
        v_grant := gongji_live_grant(p_patient_id, p_authorizer_id);
        if p_authorizer_id is not null and v_grant is null then
            outcome := 'GRANT_NOT_FOUND'; return next; return;
        end if;
        select g.authorizer_id into v_authorizer from mutual_aid_grant g where g.grant_id = v_grant;
        select a.balance_fen into v_mulaid from account a where a.person_id = v_authorizer;
    end if;
    -- Read whether or not the account pays: balc is the patient's balance after, and gongji_split
    -- takes nothing from it when p_use_account is false.
    select a.balance_fen into v_own from account a
     where a.person_id = p_patient_id and v_patient.scheme = 'EMPLOYEE';
    select * into v_split from gongji_split(p_amount_fen, v_own, v_mulaid, p_use_account);
    outcome := 'OK';
    authorizer_id := case when v_split.acct_mulaid_pay_fen > 0 then v_authorizer end;
    acct_pay_fen := v_split.acct_pay_fen;
    acct_mulaid_pay_fen := v_split.acct_mulaid_pay_fen;
    psn_cash_pay_fen := v_split.psn_cash_pay_fen;
    balc_fen := coalesce(v_own, 0) - v_split.acct_pay_fen;
    return next;
end
$$;

-- Settle also answers how long it waited for each of its locks, measured with clock_timestamp() around
-- each locking statement: only the database knows this split (from Python one call is one number).
-- gongji.store.settlements feeds them to the lock-wait histogram; a lock the call did not reach (a
-- refusal, a replay) answers null and is not observed.
create or replace function gongji_settle(
    p_institution_id text, p_terminal_id text, p_request_id text, p_request_digest bytea,
    p_voucher_id uuid, p_patient_id text, p_amount_fen bigint, p_authorizer_id text, p_use_account boolean)
returns table (
    outcome text, replayed boolean, settlement_id uuid, created_at timestamptz, terminal_id text,
    patient_id text, authorizer_id text, amount_fen bigint, acct_pay_fen bigint, acct_mulaid_pay_fen bigint,
    psn_cash_pay_fen bigint, balc_fen bigint, refunded_fen bigint,
    lock_wait_idempotency_s double precision, lock_wait_voucher_s double precision,
    lock_wait_grant_s double precision, lock_wait_account_s double precision)
language plpgsql
as $$
#variable_conflict use_column
declare
    v_scope      constant text := 'settle/' || p_institution_id;
    v_digest     bytea;
    v_existing   uuid;
    v_patient    person;
    v_voucher    voucher;
    v_grant      bigint;
    v_authorizer text;
    v_pid        text;
    v_attempt    integer;
    v_need_authorizer boolean;
    v_balance    bigint;
    v_own        bigint;   -- null: the patient has no account (resident-insured)
    v_mulaid     bigint;   -- null: no grant is used
    v_split      record;
    v_after      bigint;
    v_id         constant uuid := gen_random_uuid();
    v_t          timestamptz;
begin
    -- Requests with the same key wait for each other, so a POS retry racing its original replays it,
    -- and a reversal (gongji_reverse takes the same lock) either undoes it or refuses it, never half.
    v_t := clock_timestamp();
    perform pg_advisory_xact_lock(hashtextextended(v_scope || '/' || p_request_id, 0));
    lock_wait_idempotency_s := extract(epoch from clock_timestamp() - v_t);
    if exists (select 1 from reversal r where r.institution_id = p_institution_id and r.request_id = p_request_id) then
        outcome := 'ALREADY_REVERSED'; return next; return;
    end if;
    select k.request_digest, k.resource_id into v_digest, v_existing
      from idempotency_key k where k.scope = v_scope and k.request_id = p_request_id;
    if found then
        if v_digest <> p_request_digest then
            outcome := 'IDEMPOTENCY_KEY_REUSED'; return next; return;
        end if;
        return query
            select 'OK'::text, true, s.settlement_id, s.created_at, s.terminal_id, s.patient_id, s.authorizer_id,
                   s.amount_fen, s.acct_pay_fen, s.acct_mulaid_pay_fen, s.psn_cash_pay_fen, s.balc_fen, s.refunded_fen,
                   lock_wait_idempotency_s, null::double precision, null::double precision, null::double precision
              from settlement s where s.settlement_id = v_existing;
        return;
    end if;

    select * into v_patient from person p where p.person_id = p_patient_id;
    if not found then outcome := 'PERSON_NOT_FOUND'; return next; return; end if;
    -- The voucher row lock makes two settlements presenting one voucher take turns: one uses it.
    v_t := clock_timestamp();
    select * into v_voucher from voucher v where v.voucher_id = p_voucher_id for update;
    lock_wait_voucher_s := extract(epoch from clock_timestamp() - v_t);
    outcome := gongji_voucher_refusal(v_voucher, p_patient_id);
    if outcome is not null then return next; return; end if;
    if v_patient.status <> 'ACTIVE' then outcome := 'PERSON_NOT_ACTIVE'; return next; return; end if;

    if p_use_account then
        -- The row lock holds off a concurrent Revoke or status change until this settlement commits;
        -- if one committed first, the re-checked status excludes the row and the next live grant (if
        -- any) is tried. FOR NO KEY UPDATE, not FOR SHARE: share lockers would keep jumping ahead of
        -- a waiting Revoke on a busy grant and starve it; exclusive lockers queue in order. It costs
        -- no concurrency, as settlements on one grant serialize on the authorizer's account anyway.
        for v_attempt in 1..3 loop
            v_grant := gongji_live_grant(p_patient_id, p_authorizer_id);
            exit when v_grant is null;
            v_t := clock_timestamp();
            select g.authorizer_id into v_authorizer
              from mutual_aid_grant g where g.grant_id = v_grant and g.status = 'LIVE' for no key update;
            lock_wait_grant_s := coalesce(lock_wait_grant_s, 0) + extract(epoch from clock_timestamp() - v_t);
            exit when found;
            v_grant := null;
        end loop;
        if p_authorizer_id is not null and v_grant is null then
            outcome := 'GRANT_NOT_FOUND'; return next; return;
        end if;
        -- The authorizer's account is locked only when the patient's own may not cover the bill, so a
        -- family paying with its own money does not queue on the authorizer's row. A peek decides.
        v_need_authorizer := v_authorizer is not null;
        if v_need_authorizer and v_patient.scheme = 'EMPLOYEE' then
            select a.balance_fen into v_balance from account a where a.person_id = p_patient_id;
            v_need_authorizer := coalesce(v_balance, 0) < p_amount_fen;
        end if;
        -- One row per statement, in ascending key order: two settlements never deadlock, and each
        -- statement touches one shard once accounts are distributed by person_id.
        for v_pid in
            select x from unnest(array[case when v_patient.scheme = 'EMPLOYEE' then p_patient_id end,
                                       case when v_need_authorizer then v_authorizer end]) as x
             where x is not null order by x collate "C"
        loop
            v_t := clock_timestamp();
            select a.balance_fen into v_balance from account a where a.person_id = v_pid for update;
            lock_wait_account_s := coalesce(lock_wait_account_s, 0) + extract(epoch from clock_timestamp() - v_t);
            if v_pid = p_patient_id then v_own := v_balance; else v_mulaid := v_balance; end if;
        end loop;
        if v_authorizer is not null and not v_need_authorizer and v_own < p_amount_fen then
            -- The peek was stale: a concurrent settlement of this patient spent part of the balance.
            -- Locking the authorizer now keeps the key order only if its key sorts after the patient's;
            -- otherwise the statement asks to be run again (nothing is written yet) with fresh balances.
            if v_authorizer collate "C" < p_patient_id collate "C" then
                raise exception using errcode = 'serialization_failure',
                    message = 'gongji_settle: the patient''s balance changed under the peek; run again';
            end if;
            v_t := clock_timestamp();
            select a.balance_fen into v_mulaid from account a where a.person_id = v_authorizer for update;
            lock_wait_account_s := coalesce(lock_wait_account_s, 0) + extract(epoch from clock_timestamp() - v_t);
        end if;
    else
        -- Nothing is taken from the account (gongji_split pays all in cash), so no lock: the balance
        -- is read for balc only, the patient's balance after the settlement.
        select a.balance_fen into v_own from account a
         where a.person_id = p_patient_id and v_patient.scheme = 'EMPLOYEE';
    end if;

    select * into v_split from gongji_split(p_amount_fen, v_own, v_mulaid, p_use_account);
    assert v_split.acct_pay_fen + v_split.acct_mulaid_pay_fen + v_split.psn_cash_pay_fen = p_amount_fen;
    assert v_split.acct_pay_fen <= coalesce(v_own, 0) and v_split.acct_mulaid_pay_fen <= coalesce(v_mulaid, 0);
    if v_split.acct_mulaid_pay_fen = 0 then v_grant := null; v_authorizer := null; end if;

    return query
        insert into settlement as s (
            settlement_id, institution_id, terminal_id, request_id, patient_id, authorizer_id, grant_id,
            voucher_id, amount_fen, acct_pay_fen, acct_mulaid_pay_fen, psn_cash_pay_fen, balc_fen)
        values (
            v_id, p_institution_id, p_terminal_id, p_request_id, p_patient_id, v_authorizer, v_grant,
            p_voucher_id, p_amount_fen, v_split.acct_pay_fen, v_split.acct_mulaid_pay_fen,
            v_split.psn_cash_pay_fen, coalesce(v_own, 0) - v_split.acct_pay_fen)
        returning 'OK'::text, false, s.settlement_id, s.created_at, s.terminal_id, s.patient_id, s.authorizer_id,
                  s.amount_fen, s.acct_pay_fen, s.acct_mulaid_pay_fen, s.psn_cash_pay_fen, s.balc_fen, s.refunded_fen,
                  lock_wait_idempotency_s, lock_wait_voucher_s, lock_wait_grant_s, lock_wait_account_s;

    if v_split.acct_pay_fen > 0 then
        update account a set balance_fen = a.balance_fen - v_split.acct_pay_fen, updated_at = now()
         where a.person_id = p_patient_id returning a.balance_fen into v_after;
        assert v_after = v_own - v_split.acct_pay_fen and v_after >= 0;
        insert into ledger_entry (person_id, amount_fen, balance_after_fen, kind, settlement_id)
        values (p_patient_id, -v_split.acct_pay_fen, v_after, 'SETTLEMENT', v_id);
    end if;
    if v_split.acct_mulaid_pay_fen > 0 then
        update account a set balance_fen = a.balance_fen - v_split.acct_mulaid_pay_fen, updated_at = now()
         where a.person_id = v_authorizer returning a.balance_fen into v_after;
        assert v_after = v_mulaid - v_split.acct_mulaid_pay_fen and v_after >= 0;
        insert into ledger_entry (person_id, amount_fen, balance_after_fen, kind, settlement_id, counterpart_id)
        values (v_authorizer, -v_split.acct_mulaid_pay_fen, v_after, 'MUTUAL_AID', v_id, p_patient_id);
    end if;
    update voucher v set used_at = now(), settlement_id = v_id where v.voucher_id = p_voucher_id;
    insert into idempotency_key (scope, request_id, request_digest, resource_id)
    values (v_scope, p_request_id, p_request_digest, v_id);
end
$$;
