-- Holds at the till (issue 18): a Quote that asks for one holds its split for a short time; the Settle
-- naming the hold captures exactly that split (gongji_settle, gongji_settle_plan); a hold nobody captured
-- is released by its terminal or, once due, by the expiry work the 医保钱包's transfers use. A hold is
-- two-phase as a transfer is: its money leaves the patient's wallet and accounts (and the authorizer's)
-- when held, so no other settlement spends it, and comes back exactly once. Every way to end a hold
-- locks its row first and reads its state under that lock; only a PENDING one moves money.
--
-- Locks: a hold's row before anything else (no path locks a hold after a wallet, an account or a
-- grant), then, as every money path, the grant, the wallet, the accounts in key order. Time is the
-- service's clock (p_now), as for transfers.
--
-- Code, not history: re-applied by the migration runner whenever this file changes (see settle.sql).

-- Move a hold's money: out of the wallet and accounts when held (p_sign -1, HOLD entries), back into
-- them when it ends (p_sign 1, HOLD_RELEASE entries; a capture's settlement then takes it again). The
-- wallet first, then the accounts in key order. Mutual aid held counts towards the caps of the year its
-- room was read for (cap_year), as paid mutual aid does, and stops counting when it comes back.
create or replace function gongji_hold_move(h settlement_hold, p_sign integer, p_now timestamptz)
returns void
language plpgsql
as $$
declare
    v_kind  constant text := case when p_sign < 0 then 'HOLD' else 'HOLD_RELEASE' end;
    v_pid   text;
    v_part  bigint;
    v_after bigint;
begin
    assert p_sign in (-1, 1);
    if h.wallet_pay_fen > 0 then
        perform gongji_wallet_move(h.patient_id, p_sign * h.wallet_pay_fen, v_kind, p_now, null, null, h.hold_id);
    end if;
    for v_pid in
        select gongji_in_key_order(case when h.acct_pay_fen > 0 then h.patient_id end,
                                   case when h.acct_mulaid_pay_fen > 0 then h.authorizer_id end)
    loop
        v_part := case when v_pid = h.patient_id then h.acct_pay_fen else h.acct_mulaid_pay_fen end;
        update account a set balance_fen = a.balance_fen + p_sign * v_part, updated_at = p_now
         where a.person_id = v_pid returning a.balance_fen into v_after;
        assert v_after >= 0, 'a held account holds what it gives';
        insert into ledger_entry (person_id, amount_fen, balance_after_fen, kind, hold_id, counterpart_id, created_at)
        values (v_pid, p_sign * v_part, v_after, v_kind, h.hold_id,
                case when v_pid = h.authorizer_id then h.patient_id end, p_now);
    end loop;
    if h.acct_mulaid_pay_fen > 0 then
        perform gongji_count_mutual_aid(h.grant_id, h.patient_id, h.cap_year, -p_sign * h.acct_mulaid_pay_fen);
    end if;
end
$$;

-- End the PENDING hold h (its row locked by the caller) in p_state at p_now: RELEASED or EXPIRED give its
-- money back; CAPTURED names the settlement that took it (gongji_settle_plan gave it back first).
create or replace function gongji_end_hold(h settlement_hold, p_state text, p_now timestamptz, p_settlement_id uuid)
returns settlement_hold
language plpgsql
as $$
begin
    assert h.state = 'PENDING' and p_state in ('CAPTURED', 'RELEASED', 'EXPIRED');
    assert (p_state = 'CAPTURED') = (p_settlement_id is not null);
    if p_state <> 'CAPTURED' then
        perform gongji_hold_move(h, 1, p_now);
    end if;
    update settlement_hold x set state = p_state, resolved_at = p_now, settlement_id = p_settlement_id
     where x.hold_id = h.hold_id and x.state = 'PENDING' returning * into h;
    assert found, 'the caller holds the pending hold''s row';
    return h;
end
$$;

-- Why a Settle may not capture the hold h (its row locked; all-null: no such hold) at p_now, or null.
-- Twin: gongji.domain.holds.capture_refusal. Another institution's hold is not found; one ended is
-- resolved; one past its time is expired, and so is one holding mutual aid counted in another year's
-- caps than the settlement's (p_cap_year: a capture across New Year would count it in a year whose room
-- nobody read); a Settle asking other content than the Quote that held it (p_content_digest), or whose
-- voucher carries the patient's pick of another grant than the one held (p_grant_id), does not match.
create or replace function gongji_capture_refusal(
    h settlement_hold, p_institution_id text, p_content_digest bytea, p_now timestamptz, p_cap_year integer,
    p_grant_id bigint)
returns text
language plpgsql immutable
as $$
begin
    return case
        when h.hold_id is null or h.institution_id <> p_institution_id then 'HOLD_NOT_FOUND'
        when h.state <> 'PENDING' then 'HOLD_RESOLVED'
        when p_now >= h.expires_at or (h.acct_mulaid_pay_fen > 0 and h.cap_year <> p_cap_year) then 'HOLD_EXPIRED'
        when h.request_digest <> p_content_digest or p_grant_id <> h.grant_id then 'HOLD_MISMATCH'
    end;
end
$$;

-- Write a hold the plan decided (gongji_settle_plan), on the wallet and accounts it locked, and take its
-- money out of them.
create or replace function gongji_hold_write(
    p_now timestamptz, p_hold_seconds integer, p_institution_id text, p_terminal_id text, p_request_id text,
    p_request_digest bytea, p_patient_id text, p_amount_fen bigint, p_over_limit_fen bigint, p_wholly_fen bigint,
    p_med_type text, p_plan record)
returns settlement_hold
language plpgsql
as $$
declare
    h    settlement_hold;
    v_sp constant bill_split := p_plan.split;
begin
    assert v_sp.acct_pay_fen <= coalesce(p_plan.own_fen, 0) and v_sp.acct_mulaid_pay_fen <= coalesce(p_plan.mulaid_fen, 0)
       and v_sp.wallet_pay_fen <= coalesce(p_plan.wallet_fen, 0);
    insert into settlement_hold (
        hold_id, institution_id, terminal_id, request_id, request_digest, patient_id, authorizer_id, grant_id,
        amount_fen, over_limit_fen, wholly_self_paid_fen, med_type, acct_pay_fen, acct_mulaid_pay_fen, wallet_pay_fen,
        psn_cash_pay_fen, acct_over_limit_fen, acct_wholly_fen, mulaid_over_limit_fen, mulaid_wholly_fen,
        wallet_over_limit_fen, wallet_wholly_fen, mulaid_limited_by, cap_year, state, created_at, expires_at)
    values (
        gen_random_uuid(), p_institution_id, p_terminal_id, p_request_id, p_request_digest, p_patient_id,
        case when v_sp.acct_mulaid_pay_fen > 0 then p_plan.authorizer_id end,
        case when v_sp.acct_mulaid_pay_fen > 0 then p_plan.grant_id end, p_amount_fen, p_over_limit_fen, p_wholly_fen,
        p_med_type, v_sp.acct_pay_fen, v_sp.acct_mulaid_pay_fen, v_sp.wallet_pay_fen, v_sp.psn_cash_pay_fen,
        v_sp.acct_over_limit_fen, v_sp.acct_wholly_fen, v_sp.mulaid_over_limit_fen, v_sp.mulaid_wholly_fen,
        v_sp.wallet_over_limit_fen, v_sp.wallet_wholly_fen, p_plan.limited_by, gongji_china_year(now()), 'PENDING', p_now,
        p_now + make_interval(secs => p_hold_seconds))
    returning * into h;
    perform gongji_hold_move(h, -1, p_now);
    return h;
end
$$;

-- What a holding Quote answers beside the hold h: the patient's balances as they stand with it held (the
-- own account's, 0 without one or when the patient is not employee-insured now, as gongji_quote answers
-- it; the wallet's, null without one or when the account is not to be used),
-- what is left of the caps of the grant it holds (null: none held, or no cap), and where care happens.
create or replace function gongji_hold_after(
    h settlement_hold, p_patient person, p_institution_id text, p_use_account boolean,
    out balc_fen bigint, out wallet_balc_fen bigint, out grant_cap_left_fen bigint,
    out beneficiary_cap_left_fen bigint, out care_region text, out care_scope text)
language plpgsql stable
as $$
declare
    v_room record;
begin
    select coalesce((select a.balance_fen from account a
                      where a.person_id = h.patient_id and p_patient.scheme = 'EMPLOYEE'), 0),
           (select w.balance_fen from wallet w where w.person_id = h.patient_id and p_use_account)
      into balc_fen, wallet_balc_fen;
    care_region := gongji_institution_region(p_institution_id);
    care_scope := gongji_care_scope(p_patient.region_code, care_region);
    if h.grant_id is not null then
        v_room := gongji_mutual_aid_limits(h.grant_id, h.patient_id, p_patient.region_code, 0, false);
        grant_cap_left_fen := v_room.grant_cap_left_fen;
        beneficiary_cap_left_fen := v_room.beneficiary_cap_left_fen;
    end if;
end
$$;

-- A Quote that holds (2206 with a hold): the checks and the split of gongji_settle, with its locks, and
-- the split held for p_hold_seconds from p_now instead of settled. Idempotent on the terminal's request
-- id among the institution's holds: the same content answers the same hold again (replayed), other
-- content is IDEMPOTENCY_KEY_REUSED. The voucher is not used up: the Settle that captures uses it.
create or replace function gongji_hold(
    p_now timestamptz, p_hold_seconds integer, p_institution_id text, p_terminal_id text, p_request_id text,
    p_request_digest bytea, p_voucher_id uuid, p_voucher_names_patient boolean, p_voucher_expires_at timestamptz,
    p_voucher_binding_id bigint, p_voucher_grant_id bigint, p_cert_type text, p_patient_id text, p_amount_fen bigint,
    p_authorizer_id text, p_use_account boolean, p_over_limit_fen bigint, p_wholly_fen bigint, p_med_type text,
    p_insutype text)
returns table (outcome text, replayed boolean, held settlement_hold, balc_fen bigint, wallet_balc_fen bigint,
               grant_cap_left_fen bigint, beneficiary_cap_left_fen bigint, care_region text, care_scope text,
               insutype text)
language plpgsql
as $$
#variable_conflict use_column
declare
    v_patient person;
    v_plan    record;
    v_after   record;
begin
    perform gongji_lock_key('hold/' || p_institution_id || '/' || p_request_id);
    select * into v_patient from person p where p.person_id = p_patient_id;
    select * into held from settlement_hold h where h.institution_id = p_institution_id and h.request_id = p_request_id;
    replayed := found;
    if replayed and held.request_digest <> p_request_digest then
        outcome := 'IDEMPOTENCY_KEY_REUSED'; return next; return;
    elsif not replayed then
        outcome := gongji_presented_refusal(v_patient, p_voucher_id, p_voucher_names_patient, p_voucher_expires_at,
                                            p_voucher_binding_id, p_voucher_grant_id, p_cert_type, p_authorizer_id,
                                            p_insutype);
        if outcome is not null then return next; return; end if;
        v_plan := gongji_settle_plan(v_patient, p_institution_id, p_amount_fen, p_authorizer_id, p_voucher_grant_id,
                                     p_use_account, p_over_limit_fen, p_wholly_fen, p_med_type, null, p_now);
        outcome := v_plan.outcome;
        if outcome is not null then return next; return; end if;
        held := gongji_hold_write(p_now, p_hold_seconds, p_institution_id, p_terminal_id, p_request_id,
                                  p_request_digest, p_patient_id, p_amount_fen, p_over_limit_fen, p_wholly_fen,
                                  p_med_type, v_plan);
    end if;
    v_after := gongji_hold_after(held, v_patient, p_institution_id, p_use_account);
    select v_after.balc_fen, v_after.wallet_balc_fen, v_after.grant_cap_left_fen, v_after.beneficiary_cap_left_fen,
           v_after.care_region, v_after.care_scope, gongji_insutype(v_patient.scheme)
      into balc_fen, wallet_balc_fen, grant_cap_left_fen, beneficiary_cap_left_fen, care_region, care_scope, insutype;
    outcome := 'OK';
    return next;
end
$$;

-- The terminal releases its pending hold p_hold_id at p_now (the patient did not confirm): the money goes
-- back. Another institution's hold, or none, is HOLD_NOT_FOUND; one already released or expired answers
-- again (replayed: its money is back either way); a captured one is HOLD_RESOLVED.
create or replace function gongji_release_hold(p_now timestamptz, p_institution_id text, p_hold_id uuid)
returns table (outcome text, replayed boolean, held settlement_hold)
language plpgsql
as $$
#variable_conflict use_column
begin
    select * into held from settlement_hold h where h.hold_id = p_hold_id for update;
    outcome := gongji_release_refusal(held, p_institution_id);
    replayed := held.state in ('RELEASED', 'EXPIRED');
    if outcome is null and held.state = 'PENDING' then
        held := gongji_end_hold(held, case when p_now >= held.expires_at then 'EXPIRED' else 'RELEASED' end, p_now,
                                null);
    end if;
    outcome := coalesce(outcome, 'OK');
    return next;
end
$$;

-- Why a terminal may not release the hold h (its row locked; all-null: none), or null. Twin:
-- gongji.domain.holds.release_refusal.
create or replace function gongji_release_refusal(h settlement_hold, p_institution_id text) returns text
language plpgsql immutable
as $$
begin
    return case
        when h.hold_id is null or h.institution_id <> p_institution_id then 'HOLD_NOT_FOUND'
        when h.state = 'CAPTURED' then 'HOLD_RESOLVED'
    end;
end
$$;

-- The expiry work for holds: give back the money of at most p_limit PENDING holds past their time at
-- p_now, oldest first, and answer them. Rows another transaction holds (a capture or release in flight,
-- another replica's expiry) are skipped, not waited for. The wallets, then the accounts, are locked in
-- key order before any is written, as settlements lock them: a batch never waits in a cycle with them.
create or replace function gongji_expire_holds(p_now timestamptz, p_limit integer)
returns setof settlement_hold
language plpgsql
as $$
declare
    v_due settlement_hold[];
    h     settlement_hold;
begin
    -- Ended in patient order: two batches then update the beneficiaries' cap counts in one order too.
    select array_agg(x order by x.patient_id collate "C", x.hold_id) into v_due
      from (select * from settlement_hold x
             where x.state = 'PENDING' and x.expires_at <= p_now
             order by x.expires_at
             limit p_limit
               for update skip locked) x;
    if v_due is null then
        return;
    end if;
    perform 1 from wallet w
      where w.person_id = any(array(select d.patient_id from unnest(v_due) d where d.wallet_pay_fen > 0))
      order by w.person_id collate "C"
        for update;
    perform 1 from account a
      where a.person_id = any(array(select d.patient_id from unnest(v_due) d where d.acct_pay_fen > 0
                                    union all
                                    select d.authorizer_id from unnest(v_due) d where d.acct_mulaid_pay_fen > 0))
      order by a.person_id collate "C"
        for update;
    foreach h in array v_due loop
        return next gongji_end_hold(h, 'EXPIRED', p_now, null);
    end loop;
end
$$;
