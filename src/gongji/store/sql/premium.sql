-- PayPremium and RefundPremium: an employee's personal account pays a close relative's resident-insurance
-- premium (居民医保个人缴费), 国办发〔2024〕38号 (a). One round trip each, like gongji_settle (settle.sql):
-- refusals are answered as an `outcome` reason (the same reasons as gongji.errors) and write nothing.
--
-- gongji_pay_premium reads as its steps: the idempotent replay; who pays for whom (both people, the
-- grant and the rate), then one payment per beneficiary and year and the payer's balance, each under
-- its lock; the write. The steps that decide have a pure Python twin of the same name in
-- gongji.domain.premium, held to them by tests/integration/test_twins.py.
--
-- Locks, in the order taken: the request id (advisory), both people FOR SHARE (key order, as a Grant
-- takes them), the grant FOR NO KEY UPDATE (as gongji_lock_grant takes it for a settlement, so that a
-- concurrent Revoke waits or wins), the beneficiary's year (advisory), the payer's account FOR UPDATE.
-- A settlement takes its grant, then its accounts: the same order, so the two never deadlock.
--
-- Code, not history: re-applied by the migration runner whenever this file changes (see settle.sql).

-- Whether a PayPremium request id was seen before. Twin: gongji.domain.premium.premium_replay.
-- 'REPLAY' with the payment to answer again, 'IDEMPOTENCY_KEY_REUSED', or null: a new request. The
-- caller holds the key's advisory lock.
create or replace function gongji_premium_replay(
    p_request_id text, p_request_digest bytea, out seen text, out seen_payment_id uuid)
language plpgsql stable
as $$
declare
    v_digest bytea;
begin
    select k.request_digest, k.resource_id into v_digest, seen_payment_id
      from idempotency_key k where k.scope = 'premium' and k.request_id = p_request_id;
    if found then
        seen := case when v_digest = p_request_digest then 'REPLAY' else 'IDEMPOTENCY_KEY_REUSED' end;
    end if;
end
$$;

-- The rate of p_year for a beneficiary of the 统筹区 p_region_code: its own, else its province's; an
-- all-null row when neither is set. Twin: gongji.domain.premium.premium_rate_for.
create or replace function gongji_premium_rate(p_region_code text, p_year integer) returns premium_rate
language plpgsql stable
as $$
declare
    r premium_rate;
begin
    select * into r from premium_rate x
     where x.region_key in (p_region_code, left(p_region_code, 2)) and x.year = p_year
     order by length(x.region_key) desc
     limit 1;
    return r;
end
$$;

-- Why p_payer may not pay p_beneficiary's premium at rate r on p_today, in the order the checks run, or
-- null. Twin: gongji.domain.premium.premium_refusal. A person not enrolled is an all-null row, and so is
-- a rate not set; p_grant_id null: no live grant from payer to beneficiary. p_paid (an unrefunded
-- payment of the beneficiary's year exists) and p_balance_fen (the payer's) are read last, under locks
-- taken only once the checks before them pass: null means not read yet, and refuses nothing.
create or replace function gongji_premium_refusal(
    p_payer person, p_beneficiary person, p_payer_has_account boolean, p_grant_id bigint, r premium_rate,
    p_today date, p_paid boolean, p_balance_fen bigint) returns text
language plpgsql immutable
as $$
begin
    return case
        when p_payer.person_id is null or p_beneficiary.person_id is null then 'PERSON_NOT_FOUND'
        when p_payer.status <> 'ACTIVE' then 'PERSON_NOT_ACTIVE'
        when p_payer.scheme <> 'EMPLOYEE' or not p_payer_has_account then 'NOT_EMPLOYEE_INSURED'
        when p_beneficiary.scheme <> 'RESIDENT' then 'BENEFICIARY_NOT_RESIDENT'
        when p_grant_id is null then 'GRANT_NOT_FOUND'
        when r.region_key is null then 'PREMIUM_NOT_SET'
        when p_today not between r.opens_on and r.closes_on then 'PREMIUM_WINDOW_CLOSED'
        when p_paid then 'PREMIUM_ALREADY_PAID'
        when p_balance_fen < r.amount_fen then 'INSUFFICIENT_BALANCE'
    end;
end
$$;

-- Both people of a payment, locked FOR SHARE in key order (an Enroll changing either waits, and then
-- sees the payment; one that committed first is seen), and whether the payer has a personal account
-- (accounts are never deleted: no lock needed to know). An all-null row for someone not enrolled.
create or replace function gongji_premium_people(
    p_payer_id text, p_beneficiary_id text,
    out payer person, out beneficiary person, out payer_has_account boolean)
language plpgsql
as $$
declare
    p person;
begin
    for p in
        select * from person x where x.person_id in (p_payer_id, p_beneficiary_id)
         order by x.person_id collate "C" for share
    loop
        if p.person_id = p_payer_id then payer := p; else beneficiary := p; end if;
    end loop;
    payer_has_account := exists (select 1 from account a where a.person_id = p_payer_id);
end
$$;

-- Write a payment the steps before decided, on the account they locked: the payment row, the debit with
-- its ledger entry (counterpart: the beneficiary), the idempotency key. Answers the row.
create or replace function gongji_premium_write(
    p_payment_id uuid, p_credential_id bigint, p_request_id text, p_request_digest bytea, p_payer_id text,
    p_beneficiary person, p_grant_id bigint, r premium_rate, p_balance_fen bigint)
returns premium_payment
language plpgsql
as $$
declare
    pp      premium_payment;
    v_after bigint;
begin
    assert r.amount_fen > 0 and r.amount_fen <= p_balance_fen;
    insert into premium_payment (payment_id, request_id, credential_id, payer_id, beneficiary_id, grant_id, year,
                                 region_key, region_code, amount_fen)
    values (p_payment_id, p_request_id, p_credential_id, p_payer_id, p_beneficiary.person_id, p_grant_id, r.year,
            r.region_key, p_beneficiary.region_code, r.amount_fen)
    returning * into pp;
    update account a set balance_fen = a.balance_fen - r.amount_fen, updated_at = now()
     where a.person_id = p_payer_id returning a.balance_fen into v_after;
    assert v_after = p_balance_fen - r.amount_fen and v_after >= 0;
    insert into ledger_entry (person_id, amount_fen, balance_after_fen, kind, premium_payment_id, counterpart_id)
    values (p_payer_id, -r.amount_fen, v_after, 'PREMIUM', p_payment_id, p_beneficiary.person_id);
    insert into idempotency_key (scope, request_id, request_digest, resource_id)
    values ('premium', p_request_id, p_request_digest, p_payment_id);
    return pp;
end
$$;

-- The payer's balance right after the ledger entry of `p_kind` of payment pp: what a PayPremium (or a
-- RefundPremium) answered first, and answers again on a replay. Read through the payer's entries (a
-- replay is rare; the first answer knows its balance without looking).
create or replace function gongji_premium_balance_after(pp premium_payment, p_kind text) returns bigint
language plpgsql stable
as $$
begin
    return (select l.balance_after_fen from ledger_entry l
             where l.person_id = pp.payer_id and l.premium_payment_id = pp.payment_id and l.kind = p_kind);
end
$$;

-- PayPremium: p_payer_id's account pays p_beneficiary_id's premium of p_year, whole, on p_today (China's
-- calendar day, from the caller). p_credential_id is the caller's, checked live by the caller's statement.
-- opens_on and closes_on answer the window of the rate applied, also with PREMIUM_WINDOW_CLOSED.
create or replace function gongji_pay_premium(
    p_credential_id bigint, p_request_id text, p_request_digest bytea, p_payer_id text, p_beneficiary_id text,
    p_year integer, p_today date)
returns table (
    outcome text, replayed boolean, payment_id uuid, request_id text, payer_id text, beneficiary_id text,
    grant_id bigint, year integer, region_key text, region_code text, amount_fen bigint, created_at timestamptz,
    refunded_at timestamptz, refund_reason text, balance_fen bigint, opens_on date, closes_on date)
language plpgsql
as $$
#variable_conflict use_column
declare
    v_seen    record;
    v_people  record;   -- payer, beneficiary (all-null rows when not enrolled), payer_has_account
    v_grant   record;   -- grant_id null: no live grant from payer to beneficiary
    v_rate    premium_rate;
    v_paid    boolean;
    v_balance bigint;
    v_after   bigint;
    pp        premium_payment;
begin
    -- 1. Idempotent replay: requests with the same id take turns, so a retry racing its original replays.
    perform pg_advisory_xact_lock(hashtextextended('premium/' || p_request_id, 0));
    v_seen := gongji_premium_replay(p_request_id, p_request_digest);
    if v_seen.seen = 'REPLAY' then
        select * into pp from premium_payment x where x.payment_id = v_seen.seen_payment_id;
        v_after := gongji_premium_balance_after(pp, 'PREMIUM');
    elsif v_seen.seen is not null then
        outcome := v_seen.seen; return next; return;
    else
        -- 2. Who pays for whom: both people, the grant between them (locked), the beneficiary's rate.
        v_people := gongji_premium_people(p_payer_id, p_beneficiary_id);
        v_grant := gongji_lock_grant(p_beneficiary_id, p_payer_id, null, true);
        v_rate := gongji_premium_rate((v_people.beneficiary).region_code, p_year);
        opens_on := v_rate.opens_on;
        closes_on := v_rate.closes_on;
        outcome := gongji_premium_refusal(v_people.payer, v_people.beneficiary, v_people.payer_has_account,
                                          v_grant.grant_id, v_rate, p_today, null, null);
        if outcome is not null then return next; return; end if;
        -- 3. One payment per beneficiary and year: payers of one beneficiary-year take turns here, so two
        -- never both find it unpaid. Then the payer's balance, its row locked (after the grant, as a
        -- settlement locks them).
        perform pg_advisory_xact_lock(hashtextextended('premium-year/' || p_beneficiary_id || '/' || p_year, 0));
        v_paid := exists (select 1 from premium_payment x
                           where x.beneficiary_id = p_beneficiary_id and x.year = p_year and x.refunded_at is null);
        select a.balance_fen into v_balance from account a where a.person_id = p_payer_id for update;
        outcome := gongji_premium_refusal(v_people.payer, v_people.beneficiary, v_people.payer_has_account,
                                          v_grant.grant_id, v_rate, p_today, v_paid, v_balance);
        if outcome is not null then return next; return; end if;
        -- 4. The write.
        pp := gongji_premium_write(gen_random_uuid(), p_credential_id, p_request_id, p_request_digest, p_payer_id,
                                   v_people.beneficiary, v_grant.grant_id, v_rate, v_balance);
        v_after := v_balance - pp.amount_fen;
    end if;
    return query
        select 'OK'::text, v_seen.seen is not null, pp.payment_id, pp.request_id, pp.payer_id, pp.beneficiary_id,
               pp.grant_id, pp.year, pp.region_key, pp.region_code, pp.amount_fen, pp.created_at, pp.refunded_at,
               pp.refund_reason, v_after, opens_on, closes_on;
end
$$;

-- RefundPremium (an operator's): the premium goes back whole to the payer's account, whatever happened
-- since (a grant ended, a person no longer ACTIVE: nothing is lost), with a PREMIUM_REFUND entry; the
-- payment is marked refunded with p_reason, and the beneficiary's year may be paid again. The payment's
-- row lock makes refunds of one payment take turns: a second moves nothing and answers the payment as
-- it is (replayed), with the balance right after the first. Locks: the payment, then the payer's
-- account (no payment locks an existing payment row: no cycle with gongji_pay_premium).
create or replace function gongji_refund_premium(p_credential_id bigint, p_payment_id uuid, p_reason text)
returns table (
    outcome text, replayed boolean, payment_id uuid, request_id text, payer_id text, beneficiary_id text,
    grant_id bigint, year integer, region_key text, region_code text, amount_fen bigint, created_at timestamptz,
    refunded_at timestamptz, refund_reason text, balance_fen bigint)
language plpgsql
as $$
#variable_conflict use_column
declare
    pp       premium_payment;
    v_before bigint;
    v_after  bigint;
begin
    select * into pp from premium_payment x where x.payment_id = p_payment_id for update;
    if not found then outcome := 'PREMIUM_PAYMENT_NOT_FOUND'; return next; return; end if;
    replayed := pp.refunded_at is not null;
    if replayed then
        v_after := gongji_premium_balance_after(pp, 'PREMIUM_REFUND');
    else
        select a.balance_fen into v_before from account a where a.person_id = pp.payer_id for update;
        update account a set balance_fen = a.balance_fen + pp.amount_fen, updated_at = now()
         where a.person_id = pp.payer_id returning a.balance_fen into v_after;
        assert v_after = v_before + pp.amount_fen;
        insert into ledger_entry (person_id, amount_fen, balance_after_fen, kind, premium_payment_id, counterpart_id)
        values (pp.payer_id, pp.amount_fen, v_after, 'PREMIUM_REFUND', pp.payment_id, pp.beneficiary_id);
        update premium_payment x
           set refunded_at = now(), refund_reason = p_reason, refund_credential_id = p_credential_id
         where x.payment_id = p_payment_id
        returning * into pp;
    end if;
    return query
        select 'OK'::text, replayed, pp.payment_id, pp.request_id, pp.payer_id, pp.beneficiary_id, pp.grant_id,
               pp.year, pp.region_key, pp.region_code, pp.amount_fen, pp.created_at, pp.refunded_at,
               pp.refund_reason, v_after;
end
$$;
