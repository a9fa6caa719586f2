-- Settle as in 0002_settle.sql, now also answering how long it waited for each of its locks, measured
-- with clock_timestamp() around each locking statement. Only the database knows this split: from
-- Python one call is one number. gongji.store.settlements feeds them to the lock-wait histogram.
-- A lock the call did not reach (a refusal, a replay) answers null and is not observed.
--
-- The result columns change, which `create or replace` cannot do, so the function is dropped and
-- created again; both happen in this migration's transaction, so no caller sees it missing.
drop function gongji_settle(text, text, text, bytea, uuid, text, bigint, text, boolean);

create function gongji_settle(
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
    v_balance    bigint;
    v_own        bigint;   -- null: the patient's own account is not used
    v_mulaid     bigint;   -- null: no grant is used
    v_split      record;
    v_after      bigint;
    v_id         constant uuid := gen_random_uuid();
    v_t          timestamptz;
begin
    -- Requests with the same key wait for each other, so a POS retry racing its original replays it.
    v_t := clock_timestamp();
    perform pg_advisory_xact_lock(hashtextextended(v_scope || '/' || p_request_id, 0));
    lock_wait_idempotency_s := extract(epoch from clock_timestamp() - v_t);
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
        -- One row per statement, in ascending key order: two settlements never deadlock, and each
        -- statement touches one shard once accounts are distributed by person_id.
        for v_pid in
            select x from unnest(array[case when v_patient.scheme = 'EMPLOYEE' then p_patient_id end,
                                       v_authorizer]) as x
             where x is not null order by x collate "C"
        loop
            v_t := clock_timestamp();
            select a.balance_fen into v_balance from account a where a.person_id = v_pid for update;
            lock_wait_account_s := coalesce(lock_wait_account_s, 0) + extract(epoch from clock_timestamp() - v_t);
            if v_pid = p_patient_id then v_own := v_balance; else v_mulaid := v_balance; end if;
        end loop;
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
