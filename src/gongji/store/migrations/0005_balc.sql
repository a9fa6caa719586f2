-- balc_fen is the patient's own balance after the settlement (API.md; 0 for a resident-insured
-- patient). A patient who opted out of using the account (个人账户使用标志 off) was answered and recorded
-- with 0, as if the account were empty. Both functions as in 0002, except that the own balance is read
-- whether or not the account pays; the split is unchanged (it takes nothing when p_use_account is false).

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

create or replace function gongji_settle(
    p_institution_id text, p_terminal_id text, p_request_id text, p_request_digest bytea,
    p_voucher_id uuid, p_patient_id text, p_amount_fen bigint, p_authorizer_id text, p_use_account boolean)
returns table (
    outcome text, replayed boolean, settlement_id uuid, created_at timestamptz, terminal_id text,
    patient_id text, authorizer_id text, amount_fen bigint, acct_pay_fen bigint, acct_mulaid_pay_fen bigint,
    psn_cash_pay_fen bigint, balc_fen bigint, refunded_fen bigint)
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
    v_balance    bigint;
    v_own        bigint;   -- null: the patient has no account (resident-insured)
    v_mulaid     bigint;   -- null: no grant is used
    v_split      record;
    v_after      bigint;
    v_id         constant uuid := gen_random_uuid();
begin
    -- Requests with the same key wait for each other, so a POS retry racing its original replays it,
    -- and a reversal (gongji_reverse takes the same lock) either undoes it or refuses it, never half.
    perform pg_advisory_xact_lock(hashtextextended(v_scope || '/' || p_request_id, 0));
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
                   s.amount_fen, s.acct_pay_fen, s.acct_mulaid_pay_fen, s.psn_cash_pay_fen, s.balc_fen, s.refunded_fen
              from settlement s where s.settlement_id = v_existing;
        return;
    end if;

    select * into v_patient from person p where p.person_id = p_patient_id;
    if not found then outcome := 'PERSON_NOT_FOUND'; return next; return; end if;
    -- The voucher row lock makes two settlements presenting one voucher take turns: one uses it.
    select * into v_voucher from voucher v where v.voucher_id = p_voucher_id for update;
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
            select g.authorizer_id into v_authorizer
              from mutual_aid_grant g where g.grant_id = v_grant and g.status = 'LIVE' for no key update;
            exit when found;
            v_grant := null;
        end loop;
        if p_authorizer_id is not null and v_grant is null then
            outcome := 'GRANT_NOT_FOUND'; return next; return;
        end if;
        -- One row per statement, in ascending key order: two settlements never deadlock, and each
        -- statement touches one shard once accounts are distributed by person_id.
        for v_pid in
            select x from unnest(array[case when v_patient.scheme = 'EMPLOYEE' then p_patient_id end,
                                       v_authorizer]) as x
             where x is not null order by x collate "C"
        loop
            select a.balance_fen into v_balance from account a where a.person_id = v_pid for update;
            if v_pid = p_patient_id then v_own := v_balance; else v_mulaid := v_balance; end if;
        end loop;
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
                  s.amount_fen, s.acct_pay_fen, s.acct_mulaid_pay_fen, s.psn_cash_pay_fen, s.balc_fen, s.refunded_fen;

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
