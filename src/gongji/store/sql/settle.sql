-- Quote (2206) and Settle (2207) as server-side functions, so that a settlement is one round trip:
-- the account rows stay locked only for the database's own work, never for a network hop.
-- Refusals are answered as an `outcome` reason (the same reasons as gongji.errors) and write nothing;
-- an outcome of 'OK' is the only one that changes data.
--
-- gongji_settle reads as its steps, in the order they run: the idempotent replay, the patient and the
-- voucher, the grant, the accounts locked in key order, the split, the write. gongji_quote runs the
-- same checks and the same split without locking or writing. Each step that decides money has a pure
-- Python twin of the same name in gongji.domain, held to it by a property test
-- (tests/integration/test_twins.py, tests/integration/test_store.py).
--
-- Why the steps are PL/pgSQL, not SQL-language functions: PostgreSQL 15 plans a SQL-language function
-- that it cannot inline (one with a FROM clause or a subquery) again at every call, while PL/pgSQL keeps
-- each statement's plan for the session. A step is called as an expression (`v := step(...)`), which
-- PL/pgSQL evaluates without starting an executor. bench/functions.py measures what each one costs.
--
-- This file is code, not history: it always holds the current version, and the migration runner
-- applies it again whenever it changes (gongji.store.migrate), after the numbered migrations. A change
-- of a function's signature needs a `drop function` in a numbered migration first.

-- The waterfall, by the bill's parts: the sources in p_wallet_order (the patient's wallet, own account
-- and the authorizer's: gongji_wallet_order), then cash, each paying only the parts it may. Twin:
-- gongji.domain.waterfall.split_bill. The part within the policy scope is what the over-limit
-- (p_over_limit_fen) and wholly self-paid (p_wholly_fen) parts leave of p_amount_fen; a bill sent as its
-- amount only has neither. A null balance means "no such source" (resident patient, no grant used, no
-- wallet). p_account_pays_wholly and p_mulaid_pays_wholly: whether the personal account (and the
-- wallet, which holds personal-account money), and mutual aid, may pay the wholly self-paid items
-- (gongji_wholly_self_paid). A source pays the wholly self-paid items first where mutual aid comes after
-- it and may not pay them, so the least is left to cash; otherwise in scope, over the limit, wholly
-- self-paid.
create or replace function gongji_split(
    p_amount_fen bigint, p_over_limit_fen bigint, p_wholly_fen bigint, p_own_balance_fen bigint,
    p_mulaid_balance_fen bigint, p_wallet_balance_fen bigint, p_use_account boolean, p_account_pays_wholly boolean,
    p_mulaid_pays_wholly boolean, p_wallet_order text)
returns bill_split
language plpgsql immutable parallel safe
as $$
declare
    v_own     bigint := case when p_use_account then coalesce(p_own_balance_fen, 0) else 0 end;
    v_mulaid  bigint := case when p_use_account then coalesce(p_mulaid_balance_fen, 0) else 0 end;
    v_wallet  bigint := case when p_use_account then coalesce(p_wallet_balance_fen, 0) else 0 end;
    v_in      bigint := p_amount_fen - p_over_limit_fen - p_wholly_fen;
    v_over    bigint := p_over_limit_fen;
    v_wholly  bigint := p_wholly_fen;
    v_order   text[] := case p_wallet_order when 'BEFORE_ACCOUNT' then array['WALLET', 'OWN', 'MULAID']
                                            when 'AFTER_MUTUAL_AID' then array['OWN', 'MULAID', 'WALLET']
                                            else array['OWN', 'WALLET', 'MULAID'] end;
    v_source  text;
    v_balance bigint;
    v_may     boolean;
    v_first   boolean;
    v_pay_in  bigint;
    v_pay_over   bigint;
    v_pay_wholly bigint;
    r         bill_split;
begin
    if p_over_limit_fen = 0 and p_wholly_fen = 0 and v_wallet = 0 then
        -- All within the scope (a bill sent as its amount), no wallet: one statement, as each one costs.
        r := row(least(p_amount_fen, v_own), least(p_amount_fen - least(p_amount_fen, v_own), v_mulaid),
                 p_amount_fen - least(p_amount_fen, v_own) - least(p_amount_fen - least(p_amount_fen, v_own), v_mulaid),
                 0, 0, 0, 0, 0, 0, 0);
        return r;
    end if;
    foreach v_source in array v_order loop
        v_balance := case v_source when 'OWN' then v_own when 'MULAID' then v_mulaid else v_wallet end;
        v_may := case v_source when 'MULAID' then p_mulaid_pays_wholly else p_account_pays_wholly end;
        v_first := v_may and not p_mulaid_pays_wholly
                   and array_position(v_order, 'MULAID') > array_position(v_order, v_source);
        v_pay_wholly := case when v_first then least(v_balance, v_wholly) else 0 end;
        v_pay_in := least(v_balance - v_pay_wholly, v_in);
        v_pay_over := least(v_balance - v_pay_wholly - v_pay_in, v_over);
        if v_may and not v_first then
            v_pay_wholly := least(v_balance - v_pay_in - v_pay_over, v_wholly);
        end if;
        v_in := v_in - v_pay_in;
        v_over := v_over - v_pay_over;
        v_wholly := v_wholly - v_pay_wholly;
        case v_source
            when 'OWN' then
                r.acct_pay_fen := v_pay_in + v_pay_over + v_pay_wholly;
                r.acct_over_limit_fen := v_pay_over;
                r.acct_wholly_fen := v_pay_wholly;
            when 'MULAID' then
                r.acct_mulaid_pay_fen := v_pay_in + v_pay_over + v_pay_wholly;
                r.mulaid_over_limit_fen := v_pay_over;
                r.mulaid_wholly_fen := v_pay_wholly;
            else
                r.wallet_pay_fen := v_pay_in + v_pay_over + v_pay_wholly;
                r.wallet_over_limit_fen := v_pay_over;
                r.wallet_wholly_fen := v_pay_wholly;
        end case;
    end loop;
    r.psn_cash_pay_fen := v_in + v_over + v_wholly;
    return r;
end
$$;

-- Move p_fen (negative: out) on p_person_id's wallet at p_now for settlement p_settlement_id (and refund
-- p_refund_id), or hold p_hold_id, with a wallet entry of p_kind, and answer the balance after. The caller holds the
-- wallet's row, or takes it here, wallets before accounts (gongji_lock_accounts).
create or replace function gongji_wallet_move(
    p_person_id text, p_fen bigint, p_kind text, p_now timestamptz, p_settlement_id uuid, p_refund_id uuid,
    p_hold_id uuid)
returns bigint
language plpgsql
as $$
declare
    v_after bigint;
begin
    update wallet w set balance_fen = w.balance_fen + p_fen, updated_at = p_now
     where w.person_id = p_person_id returning w.balance_fen into v_after;
    assert v_after >= 0, 'a wallet that paid exists and holds what it gives';
    insert into wallet_entry (person_id, amount_fen, balance_after_fen, kind, settlement_id, refund_id, hold_id,
                              created_at)
    values (p_person_id, p_fen, v_after, p_kind, p_settlement_id, p_refund_id, p_hold_id, p_now);
    return v_after;
end
$$;

-- Where the wallet stands in the deduction order of a patient insured in p_region_code: the region
-- policy's, else after the own account and before mutual aid (docs/domain.md says why). Twin:
-- gongji.domain.wallet.WalletPolicy.order.
create or replace function gongji_wallet_order(p_region_code text) returns text
language plpgsql stable
as $$
begin
    return coalesce((gongji_region_policy(p_region_code)).wallet_order, 'AFTER_ACCOUNT');
end
$$;

-- The limit a settlement answers (p_limited_by: what held mutual aid back, the room's or the care
-- region's), when cash paid part of what mutual aid may pay: then mutual aid paid all it could. Cash
-- paying wholly self-paid items mutual aid may not pay for (p_mulaid_pays_wholly false) is no limit of
-- mutual aid's. Twin: gongji.domain.waterfall.settlement_limit.
create or replace function gongji_settlement_limit(
    p_split bill_split, p_wholly_fen bigint, p_mulaid_pays_wholly boolean, p_limited_by text)
returns text
language plpgsql immutable parallel safe
as $$
begin
    return case when p_split.psn_cash_pay_fen
                     - case when p_mulaid_pays_wholly then 0
                            else coalesce(p_wholly_fen, 0) - p_split.acct_wholly_fen - p_split.mulaid_wholly_fen end > 0
                then p_limited_by end;
end
$$;

-- What may pay the wholly self-paid items (p_wholly_fen of them) of care of p_med_type for a patient
-- insured in p_region_code: the personal account, and mutual aid, unless the region's policy excludes
-- the kind of care (no policy, nothing excluded, no med_type or no such items: both may, and no policy
-- is read). Mutual aid never pays what the own account may not. Twin:
-- gongji.domain.eligibility.wholly_self_paid.
create or replace function gongji_wholly_self_paid(
    p_region_code text, p_med_type text, p_wholly_fen bigint, out account boolean, out mutual_aid boolean)
language plpgsql stable
as $$
declare
    r region_policy;
begin
    account := true;
    mutual_aid := true;
    if coalesce(p_wholly_fen, 0) = 0 or p_med_type is null then
        return;
    end if;
    r := gongji_region_policy(p_region_code);
    account := not coalesce(p_med_type = any(r.wholly_self_paid_no_account), false);
    mutual_aid := account and not coalesce(p_med_type = any(r.wholly_self_paid_no_mutual_aid), false);
end
$$;

-- The insutype a patient of scheme p_scheme settles under: 310 employee basic, 390 resident basic.
-- Twin: gongji.domain.bill.insutype_of.
create or replace function gongji_insutype(p_scheme text) returns text
language sql immutable parallel safe
as $$
    select case p_scheme when 'EMPLOYEE' then '310' else '390' end
$$;

-- Whether a Settle request was seen before. Twin: gongji.domain.settlement.settle_replay.
-- 'ALREADY_REVERSED': a reversal by this request id came first; 'IDEMPOTENCY_KEY_REUSED': the key
-- settled another request; 'REPLAY' with the settlement to answer again; null: a new request. The
-- caller holds the key's advisory lock.
create or replace function gongji_settle_replay(
    p_institution_id text, p_request_id text, p_request_digest bytea,
    out seen text, out seen_settlement_id uuid)
language plpgsql stable
as $$
declare
    v_digest bytea;
begin
    if exists (select 1 from reversal r where r.institution_id = p_institution_id and r.request_id = p_request_id) then
        seen := 'ALREADY_REVERSED';
        return;
    end if;
    select k.request_digest, k.resource_id into v_digest, seen_settlement_id
      from idempotency_key k where k.scope = 'settle/' || p_institution_id and k.request_id = p_request_id;
    if found then
        seen := case when v_digest = p_request_digest then 'REPLAY' else 'IDEMPOTENCY_KEY_REUSED' end;
    end if;
end
$$;

-- Why the genuine e-voucher p_voucher_id cannot settle for p_patient_id, or null when it can. Twin:
-- gongji.domain.vouchers.voucher_refusal. A token is self-contained (gongji.domain.vouchers): the
-- server has checked its signature and whether it names the patient (p_names_patient) and passes its
-- expiry and binding; the books add whether a settlement already used it. The real-name rule is
-- checked before use and expiry: presenting someone else's voucher is the fraud signal and must be
-- counted as such.
--
-- Single use: gongji_settle takes the voucher id's transaction lock before it asks, so two settlements
-- presenting one voucher take turns, and the second, asking with a snapshot taken after the first
-- committed, finds its settlement. The unique index settlement_voucher backs this up.
--
-- A voucher a holder asked for a member (p_binding_id not null) is good only while the binding it was
-- issued under lives: after Unbind, the holder can no longer show the member's voucher, including one
-- issued before, and binding again makes a new binding, which does not bring back vouchers issued
-- before it.
create or replace function gongji_voucher_refusal(
    p_voucher_id uuid, p_names_patient boolean, p_expires_at timestamptz, p_binding_id bigint, p_patient_id text)
returns text
language plpgsql stable
as $$
begin
    return case
        when not p_names_patient then 'VOUCHER_PATIENT_MISMATCH'
        when exists (select 1 from settlement s where s.voucher_id = p_voucher_id) then 'VOUCHER_ALREADY_USED'
        when p_expires_at <= now() then 'VOUCHER_EXPIRED'
        when p_binding_id is not null and not exists (
            select 1 from kinship_binding b
             where b.binding_id = p_binding_id and b.member_id = p_patient_id and b.ended_at is null)
            then 'VOUCHER_INVALID'
    end;
end
$$;

-- Why p_patient_id may not settle (or quote), given the voucher's refusal (gongji_voucher_refusal), or
-- null. Twin: gongji.domain.settlement.settle_refusal. p is the patient's row, all-null when not
-- enrolled.
create or replace function gongji_settle_refusal(p person, p_voucher_refusal text) returns text
language plpgsql immutable
as $$
begin
    if p.person_id is null then
        return 'PERSON_NOT_FOUND';
    end if;
    return coalesce(p_voucher_refusal, case when p.status <> 'ACTIVE' then 'PERSON_NOT_ACTIVE' end);
end
$$;

-- Why a settlement under the insutype the terminal said (p_insutype; null: it did not say) may not be made
-- for a patient of scheme p_scheme, or null. Twin: gongji.domain.bill.insutype_refusal.
create or replace function gongji_insutype_refusal(p_scheme text, p_insutype text) returns text
language sql immutable parallel safe
as $$
    select case when p_insutype <> gongji_insutype(p_scheme) then 'INSUTYPE_MISMATCH' end
$$;

-- Why a terminal's choice of authorizer may not stand, or null: the e-voucher carries the grant the
-- patient picked in the app (p_voucher_grant_id, null when none was picked), and a terminal that names
-- another authorizer contradicts the patient. Twin: gongji.domain.eligibility.voucher_choice_refusal.
create or replace function gongji_voucher_choice_refusal(p_voucher_grant_id bigint, p_authorizer_id text)
returns text
language plpgsql stable
as $$
begin
    return case when p_voucher_grant_id is not null and p_authorizer_id is not null and not exists (
                    select 1 from mutual_aid_grant g
                     where g.grant_id = p_voucher_grant_id and g.authorizer_id = p_authorizer_id)
                then 'VOUCHER_AUTHORIZER_MISMATCH' end;
end
$$;

-- Take the transaction-scoped advisory lock named p_key and answer the seconds waited for it; a null key
-- (a card presented, which has no voucher id to lock) locks nothing and answers null. gongji_settle
-- takes two: its request id's ('settle/<institution>/<request id>': a POS retry racing its original
-- replays it, and a reversal, gongji_reverse taking the same lock, undoes it or refuses it, never half)
-- and its voucher's ('voucher/<id>': settlements presenting one voucher take turns, gongji_voucher_refusal).
create or replace function gongji_lock_key(p_key text) returns double precision
language plpgsql
as $$
declare
    v_t constant timestamptz := clock_timestamp();
begin
    if p_key is null then
        return null;
    end if;
    perform pg_advisory_xact_lock(hashtextextended(p_key, 0));
    return extract(epoch from clock_timestamp() - v_t);
end
$$;

-- Why a card of p_cert_type (what the patient presented: 'E_VOUCHER', 'ID_CARD',
-- 'SOCIAL_SECURITY_CARD') may not be presented by a patient insured in p_region_code, or null. The
-- e-voucher is always accepted; a card where the region's policy accepts its type (no policy, or no
-- list: every type). Twin: gongji.domain.eligibility.certificate_refusal.
create or replace function gongji_certificate_refusal(p_cert_type text, p_region_code text) returns text
language plpgsql stable
as $$
begin
    return case when p_cert_type <> 'E_VOUCHER'
                 and not p_cert_type = any(coalesce((gongji_region_policy(p_region_code)).accepted_cert_types,
                                                    array[p_cert_type]))
                then 'CERTIFICATE_TYPE_NOT_ALLOWED' end;
end
$$;

-- Why the patient p (all-null when not enrolled) may not settle or quote with what they presented, or
-- null: the patient and the voucher first (gongji_settle_refusal; a card is judged as a voucher that
-- names its holder and is never used up nor expires), then whether the patient's region accepts the
-- card (gongji_certificate_refusal), then the terminal's authorizer against the grant the voucher
-- carries (gongji_voucher_choice_refusal), then the insutype the terminal said (p_insutype, null when it
-- did not) against the patient's scheme (gongji_insutype_refusal).
create or replace function gongji_presented_refusal(
    p person, p_voucher_id uuid, p_names_patient boolean, p_expires_at timestamptz, p_binding_id bigint,
    p_grant_id bigint, p_cert_type text, p_authorizer_id text, p_insutype text)
returns text
language plpgsql stable
as $$
begin
    return coalesce(
        gongji_settle_refusal(p, gongji_voucher_refusal(p_voucher_id, p_names_patient, p_expires_at, p_binding_id,
                                                        p.person_id)),
        gongji_certificate_refusal(p_cert_type, p.region_code),
        gongji_voucher_choice_refusal(p_grant_id, p_authorizer_id),
        gongji_insutype_refusal(p.scheme, p_insutype));
end
$$;

-- The grant a settlement of p_beneficiary_id would draw on: the one the patient picked (p_grant_id,
-- carried by the e-voucher), else the named authorizer's, else the oldest live one. The authorizer must
-- still be an active employee-insured person. Twin: gongji.domain.eligibility.live_grant.
create or replace function gongji_live_grant(p_beneficiary_id text, p_authorizer_id text, p_grant_id bigint)
returns bigint
language plpgsql stable
as $$
begin
    return (select g.grant_id
              from mutual_aid_grant g
              join person a on a.person_id = g.authorizer_id
             where g.beneficiary_id = p_beneficiary_id
               and g.status = 'LIVE'
               and (p_authorizer_id is null or g.authorizer_id = p_authorizer_id)
               and (p_grant_id is null or g.grant_id = p_grant_id)
               and a.status = 'ACTIVE' and a.scheme = 'EMPLOYEE'
             order by g.created_at, g.grant_id
             limit 1);
end
$$;

-- Lock the grant gongji_live_grant picks. The row lock holds off a concurrent Revoke or status change
-- until this settlement commits; if one committed first, the re-checked status excludes the row and
-- the next live grant (if any) is tried. FOR NO KEY UPDATE, not FOR SHARE: share lockers would keep
-- jumping ahead of a waiting Revoke on a busy grant and starve it; exclusive lockers queue in order. It
-- costs no concurrency, as settlements on one grant serialize on the authorizer's account anyway.
-- wait_s: time spent waiting for the row lock, null when no grant was locked. Nothing is locked when
-- the personal account may not pay (p_use_account false): mutual aid is personal-account money too.
create or replace function gongji_lock_grant(
    p_beneficiary_id text, p_authorizer_id text, p_grant_id bigint, p_use_account boolean,
    out grant_id bigint, out authorizer_id text, out wait_s double precision)
language plpgsql
as $$
declare
    v_t timestamptz;
begin
    for v_attempt in 1..3 loop
        exit when not p_use_account;
        grant_id := gongji_live_grant(p_beneficiary_id, p_authorizer_id, p_grant_id);
        exit when grant_id is null;
        v_t := clock_timestamp();
        select g.authorizer_id into authorizer_id
          from mutual_aid_grant g where g.grant_id = gongji_lock_grant.grant_id and g.status = 'LIVE'
           for no key update;
        wait_s := coalesce(wait_s, 0) + extract(epoch from clock_timestamp() - v_t);
        exit when found;
        grant_id := null;
    end loop;
end
$$;

-- Lock the accounts a settlement of p_amount_fen draws on and answer their balances (null: no such
-- account, or not drawn on) and the time waited for their locks. One row per statement, in ascending
-- key order: two settlements never deadlock, and each statement touches one shard once accounts are
-- distributed by person_id.
--
-- The authorizer's account is locked only when the patient's own may not cover the bill, so a family
-- paying with its own money does not queue on the authorizer's row. A peek decides. When the personal
-- account may not pay (p_use_account false), nothing is taken from it and nothing is locked: its
-- balance is read for balc only, the patient's balance after the settlement.
--
-- p_amount_fen null: the caller needs the authorizer's account whatever a peek would say (a capture of
-- held mutual aid, whose money is out of the balances).
--
-- The patient's wallet (wallet_fen null: none, or the account may not pay) is locked first, as every
-- money path takes a wallet before accounts (refunds, their reversals); its balance is then fixed, and
-- what it pays before mutual aid (wallet_order, the patient's region policy: gongji_wallet_order, read
-- only when the wallet holds money) leaves less to the accounts.
create or replace function gongji_lock_accounts(
    p_patient_id text, p_has_account boolean, p_authorizer_id text, p_amount_fen bigint, p_use_account boolean,
    p_region_code text,
    out own_fen bigint, out mulaid_fen bigint, out wallet_fen bigint, out wallet_order text, out wait_s double precision)
language plpgsql
as $$
declare
    v_need_authorizer boolean := p_authorizer_id is not null;
    v_first   text;
    v_second  text;
    v_pid     text;
    v_balance bigint;
    v_t       timestamptz := clock_timestamp();
begin
    if not p_use_account then
        select a.balance_fen into own_fen from account a where a.person_id = p_patient_id and p_has_account;
        return;
    end if;
    select w.balance_fen into wallet_fen from wallet w where w.person_id = p_patient_id for update;
    if found then
        wait_s := extract(epoch from clock_timestamp() - v_t);
        wallet_order := case when wallet_fen > 0 then gongji_wallet_order(p_region_code) end;
        p_amount_fen := p_amount_fen - case when wallet_order <> 'AFTER_MUTUAL_AID' then wallet_fen else 0 end;
    end if;
    if v_need_authorizer and p_has_account then
        select a.balance_fen into v_balance from account a where a.person_id = p_patient_id;
        v_need_authorizer := p_amount_fen is null or coalesce(v_balance, 0) < p_amount_fen;
    end if;
    -- At most two rows, so the order is decided here rather than by a sorting query.
    v_first := case when p_has_account then p_patient_id end;
    v_second := case when v_need_authorizer then p_authorizer_id end;
    if v_first is null or (v_second is not null and v_second collate "C" < v_first collate "C") then
        v_pid := v_first;
        v_first := v_second;
        v_second := v_pid;
    end if;
    foreach v_pid in array array[v_first, v_second] loop
        continue when v_pid is null;
        v_t := clock_timestamp();
        select a.balance_fen into v_balance from account a where a.person_id = v_pid for update;
        wait_s := coalesce(wait_s, 0) + extract(epoch from clock_timestamp() - v_t);
        if v_pid = p_patient_id then own_fen := v_balance; else mulaid_fen := v_balance; end if;
    end loop;
    if p_authorizer_id is not null and not v_need_authorizer and own_fen < p_amount_fen then
        -- The peek was stale: a concurrent settlement of this patient spent part of the balance.
        -- Locking the authorizer now keeps the key order only if its key sorts after the patient's;
        -- otherwise the statement asks to be run again (nothing is written yet) with fresh balances.
        if p_authorizer_id collate "C" < p_patient_id collate "C" then
            raise exception using errcode = 'serialization_failure',
                message = 'gongji_settle: the patient''s balance changed under the peek; run again';
        end if;
        v_t := clock_timestamp();
        select a.balance_fen into mulaid_fen from account a where a.person_id = p_authorizer_id for update;
        wait_s := coalesce(wait_s, 0) + extract(epoch from clock_timestamp() - v_t);
    end if;
end
$$;

-- The calendar year of t in China's time zone: caps count per such year.
create or replace function gongji_china_year(t timestamptz) returns integer
language sql stable
as $$
    select extract(year from t at time zone 'Asia/Shanghai')::integer
$$;

-- The most the authorizer's account may pay for one settlement: its balance above the floor, and no
-- more than what is left of the grant's yearly cap and of the beneficiary's; a null limit applies
-- none, a null balance means no grant is drawn on. limited_by names the limit that set the room when
-- it is less than the balance (on a tie: the grant's cap, the beneficiary's, the floor). Twin:
-- gongji.domain.waterfall.mutual_aid_room.
create or replace function gongji_mutual_aid_room(
    p_balance_fen bigint, p_floor_fen bigint, p_grant_cap_left_fen bigint, p_beneficiary_cap_left_fen bigint,
    out room_fen bigint, out limited_by text)
language plpgsql immutable parallel safe
as $$
declare
    v_above_floor bigint := case when p_floor_fen > 0 then greatest(p_balance_fen - p_floor_fen, 0) end;
begin
    if p_balance_fen is null then
        return;
    end if;
    -- least() skips nulls: a limit that does not apply does not count.
    room_fen := least(p_balance_fen, p_grant_cap_left_fen, p_beneficiary_cap_left_fen, v_above_floor);
    limited_by := case when room_fen >= p_balance_fen then null
                       when room_fen = p_grant_cap_left_fen then 'GRANT_CAP'
                       when room_fen = p_beneficiary_cap_left_fen then 'BENEFICIARY_CAP'
                       else 'AUTHORIZER_FLOOR' end;
end
$$;

-- The policy of a region: its 统筹区's own, else its province's; all nulls when neither is set. The one
-- place this rule is written (gongji.store.policies and the caps read it here).
create or replace function gongji_region_policy(p_region_code text) returns region_policy
language plpgsql stable
as $$
declare
    r region_policy;
begin
    select * into r from region_policy p
     where p.region_key in (p_region_code, left(p_region_code, 2)) order by length(p.region_key) desc limit 1;
    return r;
end
$$;

-- What is left in year p_year of a grant's yearly cap, and of a beneficiary's; null when no cap applies
-- (p_cap_fen null). A cap counts what mutual aid paid that year, net of refunds.
create or replace function gongji_grant_cap_left(p_grant_id bigint, p_cap_fen bigint, p_year integer) returns bigint
language plpgsql stable
as $$
begin
    if p_cap_fen is null then
        return null;
    end if;
    return greatest(p_cap_fen - coalesce(
        (select u.used_fen from grant_usage u where u.grant_id = p_grant_id and u.year = p_year), 0), 0);
end
$$;

create or replace function gongji_beneficiary_cap_left(p_beneficiary_id text, p_cap_fen bigint, p_year integer)
returns bigint
language plpgsql stable
as $$
begin
    if p_cap_fen is null then
        return null;
    end if;
    return greatest(p_cap_fen - coalesce(
        (select u.used_fen from beneficiary_usage u where u.beneficiary_id = p_beneficiary_id and u.year = p_year),
        0), 0);
end
$$;

-- The limits on what grant p_grant_id may pay for p_beneficiary_id this year, and the room they leave
-- of the authorizer's p_balance_fen (gongji_mutual_aid_room). The floor is the authorizer's region
-- policy, the beneficiary's cap the beneficiary's region policy (the most specific of each), the
-- grant's cap its own; a cap counts what mutual aid paid this year, net of refunds (grant_usage,
-- beneficiary_usage). With p_lock, settlements of one beneficiary take turns on the beneficiary's
-- count (the grant's count needs no lock of its own: the caller holds the grant's row, and only
-- settlements on the grant raise it).
create or replace function gongji_mutual_aid_limits(
    p_grant_id bigint, p_beneficiary_id text, p_beneficiary_region text, p_balance_fen bigint, p_lock boolean,
    out room_fen bigint, out limited_by text, out grant_cap_left_fen bigint, out beneficiary_cap_left_fen bigint)
language plpgsql
as $$
declare
    v_year      integer;
    v_grant_cap bigint;
    v_floor     bigint;
    v_ben_cap   bigint;
    v_room      record;
begin
    if p_balance_fen is null then
        return;
    end if;
    v_year := gongji_china_year(now());
    select g.yearly_cap_fen, (gongji_region_policy(a.region_code)).authorizer_floor_fen,
           (gongji_region_policy(p_beneficiary_region)).beneficiary_yearly_cap_fen
      into v_grant_cap, v_floor, v_ben_cap
      from mutual_aid_grant g join person a on a.person_id = g.authorizer_id
     where g.grant_id = p_grant_id;
    grant_cap_left_fen := gongji_grant_cap_left(p_grant_id, v_grant_cap, v_year);
    -- Settlements drawing mutual aid for one beneficiary take turns on the beneficiary's year whether a
    -- cap applies now or not: one that read no cap (a policy set, or the beneficiary moved, while it
    -- ran) still holds the turn until it commits, so the next reads what it paid.
    if p_lock then
        perform pg_advisory_xact_lock(hashtextextended('beneficiary_usage/' || p_beneficiary_id || '/' || v_year, 0));
    end if;
    beneficiary_cap_left_fen := gongji_beneficiary_cap_left(p_beneficiary_id, v_ben_cap, v_year);
    v_room := gongji_mutual_aid_room(p_balance_fen, v_floor, grant_cap_left_fen, beneficiary_cap_left_fen);
    room_fen := v_room.room_fen;
    limited_by := v_room.limited_by;
end
$$;

-- Count p_fen of mutual aid (negative: a refund gives it back) towards year p_year of a grant and of
-- its beneficiary. The grant's count first, then the beneficiary's, in every caller, after the accounts.
create or replace function gongji_count_mutual_aid(p_grant_id bigint, p_beneficiary_id text, p_year integer, p_fen bigint)
returns void
language plpgsql
as $$
begin
    -- A refund follows its settlement, which made the rows: it only updates them (an insert of the
    -- negative amount would fail its CHECK before ON CONFLICT looks for the row).
    if p_fen < 0 then
        update grant_usage u set used_fen = u.used_fen + p_fen where u.grant_id = p_grant_id and u.year = p_year;
        assert found, 'a refunded grant has its count';
        update beneficiary_usage u set used_fen = u.used_fen + p_fen
         where u.beneficiary_id = p_beneficiary_id and u.year = p_year;
        assert found, 'a refunded beneficiary has its count';
        return;
    end if;
    insert into grant_usage as u (grant_id, year, used_fen) values (p_grant_id, p_year, p_fen)
    on conflict (grant_id, year) do update set used_fen = u.used_fen + excluded.used_fen;
    insert into beneficiary_usage as u (beneficiary_id, year, used_fen) values (p_beneficiary_id, p_year, p_fen)
    on conflict (beneficiary_id, year) do update set used_fen = u.used_fen + excluded.used_fen;
end
$$;

-- The 统筹区 of an institution, as a settlement counts where care happened: the one an operator set, else
-- the prefecture of the region in its national code (定点医药机构编码: a letter, the 6-digit region it is
-- registered in, a number; H61010300101 is in 610103, so in 610100), else null (unknown).
create or replace function gongji_institution_region(p_institution_id text) returns text
language plpgsql stable
as $$
begin
    return coalesce(
        (select i.region_code from institution i where i.institution_id = p_institution_id),
        case when p_institution_id ~ '^[A-Z][1-9][0-9]{5}' then substr(p_institution_id, 2, 4) || '00' end);
end
$$;

-- Where care happened against where the patient is insured (异地就医): 'LOCAL' in the same 统筹区,
-- counted as the same prefecture (the first four digits: pooling is at least city-wide), or where the
-- institution's region is unknown; 'OUT_OF_REGION' elsewhere in the province; 'OUT_OF_PROVINCE'. Twin:
-- gongji.domain.eligibility.care_scope.
create or replace function gongji_care_scope(p_insured_region text, p_care_region text) returns text
language plpgsql immutable
as $$
begin
    return case when p_care_region is null or left(p_care_region, 4) = left(p_insured_region, 4) then 'LOCAL'
                when left(p_care_region, 2) = left(p_insured_region, 2) then 'OUT_OF_REGION'
                else 'OUT_OF_PROVINCE' end;
end
$$;

-- Whether mutual aid may pay for care of p_care_scope for a patient insured in p_insured_region: always
-- for local care, elsewhere as the patient's region policy says (no policy, or nothing said: it may, as
-- the national rules let the personal account pay 异地 care). Twin:
-- gongji.domain.eligibility.mutual_aid_for_care.
create or replace function gongji_mutual_aid_care_allowed(p_care_scope text, p_insured_region text) returns boolean
language plpgsql stable
as $$
declare
    r region_policy;
begin
    if p_care_scope = 'LOCAL' then
        return true;
    end if;
    r := gongji_region_policy(p_insured_region);
    return case p_care_scope when 'OUT_OF_REGION' then coalesce(r.mutual_aid_out_of_region, true)
                             else coalesce(r.mutual_aid_out_of_province, true) end;
end
$$;

-- Where the care of a settlement (or quote) at p_institution_id happens, and whether mutual aid may pay
-- for it: only when the personal account is used (p_use_account) and the care region allows it.
-- limited_by is 'CARE_REGION' when the region does not and the patient holds a grant that would
-- otherwise pay (the grant the settlement would pick: gongji_live_grant).
create or replace function gongji_care(
    p_institution_id text, p_patient_id text, p_insured_region text, p_authorizer_id text, p_grant_id bigint,
    p_use_account boolean, out care_region text, out care_scope text, out mutual_aid boolean, out limited_by text)
language plpgsql stable
as $$
declare
    v_allowed boolean;
begin
    care_region := gongji_institution_region(p_institution_id);
    care_scope := gongji_care_scope(p_insured_region, care_region);
    v_allowed := gongji_mutual_aid_care_allowed(care_scope, p_insured_region);
    mutual_aid := p_use_account and v_allowed;
    limited_by := case when p_use_account and not v_allowed
                        and gongji_live_grant(p_patient_id, p_authorizer_id, p_grant_id) is not null
                       then 'CARE_REGION' end;
end
$$;

-- Write a settlement the steps before decided, on accounts they locked: the settlement row (which
-- names its voucher: that makes the voucher used), each account's debit with its ledger entry, the
-- idempotency key. Answers the row.
-- The grant and its authorizer are recorded only when mutual aid pays part of the bill, and what it
-- paid counts towards this year's caps of the grant and of the beneficiary. The bill's parts over the
-- limit and wholly self-paid are null when it was sent as its amount only (recorded as 'AMOUNT'). The
-- wallet's balance after is recorded when it was drawn on (p_wallet_fen not null: its balance before).
create or replace function gongji_settle_write(
    p_settlement_id uuid, p_institution_id text, p_terminal_id text, p_request_id text, p_request_digest bytea,
    p_voucher_id uuid, p_patient_id text, p_grant_id bigint, p_authorizer_id text, p_amount_fen bigint,
    p_own_fen bigint, p_mulaid_fen bigint, p_wallet_fen bigint, p_split bill_split, p_mulaid_limited_by text,
    p_cert_type text, p_insured_region text, p_care_region text, p_care_scope text, p_over_limit_fen bigint,
    p_wholly_fen bigint, p_med_type text, p_insutype text)
returns settlement
language plpgsql
as $$
declare
    s       settlement;
    v_after bigint;
begin
    assert p_split.acct_pay_fen between 0 and coalesce(p_own_fen, 0)
       and p_split.acct_mulaid_pay_fen between 0 and coalesce(p_mulaid_fen, 0)
       and p_split.wallet_pay_fen between 0 and coalesce(p_wallet_fen, 0);
    if p_split.acct_mulaid_pay_fen = 0 then
        p_grant_id := null;
        p_authorizer_id := null;
    end if;
    insert into settlement (
        settlement_id, institution_id, terminal_id, request_id, patient_id, authorizer_id, grant_id, voucher_id,
        amount_fen, acct_pay_fen, acct_mulaid_pay_fen, psn_cash_pay_fen, balc_fen, mulaid_limited_by, cert_type,
        insured_region, care_region, care_scope, bill_read, over_limit_fen, wholly_self_paid_fen, acct_over_limit_fen,
        acct_wholly_fen, mulaid_over_limit_fen, mulaid_wholly_fen, med_type, insutype, wallet_pay_fen,
        wallet_over_limit_fen, wallet_wholly_fen, wallet_balc_fen)
    values (
        p_settlement_id, p_institution_id, p_terminal_id, p_request_id, p_patient_id, p_authorizer_id, p_grant_id,
        p_voucher_id, p_amount_fen, p_split.acct_pay_fen, p_split.acct_mulaid_pay_fen, p_split.psn_cash_pay_fen,
        coalesce(p_own_fen, 0) - p_split.acct_pay_fen, p_mulaid_limited_by, p_cert_type, p_insured_region,
        p_care_region, p_care_scope, case when p_over_limit_fen is null then 'AMOUNT' else 'PARTS' end,
        coalesce(p_over_limit_fen, 0), coalesce(p_wholly_fen, 0), p_split.acct_over_limit_fen, p_split.acct_wholly_fen,
        p_split.mulaid_over_limit_fen, p_split.mulaid_wholly_fen, p_med_type, p_insutype, p_split.wallet_pay_fen,
        p_split.wallet_over_limit_fen, p_split.wallet_wholly_fen, p_wallet_fen - p_split.wallet_pay_fen)
    returning * into s;
    if p_split.acct_pay_fen > 0 then
        update account a set balance_fen = a.balance_fen - p_split.acct_pay_fen, updated_at = now()
         where a.person_id = p_patient_id returning a.balance_fen into v_after;
        assert v_after = p_own_fen - p_split.acct_pay_fen and v_after >= 0;
        insert into ledger_entry (person_id, amount_fen, balance_after_fen, kind, settlement_id)
        values (p_patient_id, -p_split.acct_pay_fen, v_after, 'SETTLEMENT', p_settlement_id);
    end if;
    if p_split.acct_mulaid_pay_fen > 0 then
        update account a set balance_fen = a.balance_fen - p_split.acct_mulaid_pay_fen, updated_at = now()
         where a.person_id = p_authorizer_id returning a.balance_fen into v_after;
        assert v_after = p_mulaid_fen - p_split.acct_mulaid_pay_fen and v_after >= 0;
        insert into ledger_entry (person_id, amount_fen, balance_after_fen, kind, settlement_id, counterpart_id)
        values (p_authorizer_id, -p_split.acct_mulaid_pay_fen, v_after, 'MUTUAL_AID', p_settlement_id, p_patient_id);
        perform gongji_count_mutual_aid(p_grant_id, p_patient_id, gongji_china_year(s.created_at),
                                        p_split.acct_mulaid_pay_fen);
    end if;
    if p_split.wallet_pay_fen > 0 then
        v_after := gongji_wallet_move(p_patient_id, -p_split.wallet_pay_fen, 'SETTLEMENT', now(), p_settlement_id,
                                      null, null);
        assert v_after = p_wallet_fen - p_split.wallet_pay_fen;
    end if;
    insert into idempotency_key (scope, request_id, request_digest, resource_id)
    values ('settle/' || p_institution_id, p_request_id, p_request_digest, p_settlement_id);
    return s;
end
$$;

create or replace function gongji_quote(
    p_institution_id text, p_voucher_id uuid, p_voucher_names_patient boolean, p_voucher_expires_at timestamptz,
    p_voucher_binding_id bigint, p_voucher_grant_id bigint, p_cert_type text, p_patient_id text, p_amount_fen bigint,
    p_authorizer_id text, p_use_account boolean, p_over_limit_fen bigint, p_wholly_fen bigint, p_med_type text,
    p_insutype text)
returns table (
    outcome text, authorizer_id text, acct_pay_fen bigint, acct_mulaid_pay_fen bigint,
    psn_cash_pay_fen bigint, balc_fen bigint, mulaid_limited_by text, grant_cap_left_fen bigint,
    beneficiary_cap_left_fen bigint, care_region text, care_scope text, acct_over_limit_fen bigint,
    acct_wholly_fen bigint, mulaid_over_limit_fen bigint, mulaid_wholly_fen bigint, insutype text,
    wallet_pay_fen bigint, wallet_over_limit_fen bigint, wallet_wholly_fen bigint, wallet_balc_fen bigint)
language plpgsql
as $$
#variable_conflict use_column
declare
    v_patient    person;
    v_grant      bigint;
    v_authorizer text;
    v_own        bigint;
    v_mulaid     bigint;
    v_wallet     bigint;
    v_room       record;
    v_split      bill_split;
    v_care       record;
    v_wholly     record;
begin
    select * into v_patient from person p where p.person_id = p_patient_id;
    outcome := gongji_presented_refusal(v_patient, p_voucher_id, p_voucher_names_patient, p_voucher_expires_at,
                                        p_voucher_binding_id, p_voucher_grant_id, p_cert_type, p_authorizer_id,
                                        p_insutype);
    if outcome is not null then return next; return; end if;
    v_care := gongji_care(p_institution_id, p_patient_id, v_patient.region_code, p_authorizer_id, p_voucher_grant_id,
                          p_use_account);
    if v_care.mutual_aid then
        v_grant := gongji_live_grant(p_patient_id, p_authorizer_id, p_voucher_grant_id);
        if num_nonnulls(p_authorizer_id, p_voucher_grant_id) > 0 and v_grant is null then
            outcome := 'GRANT_NOT_FOUND'; return next; return;
        end if;
        select g.authorizer_id into v_authorizer from mutual_aid_grant g where g.grant_id = v_grant;
        select a.balance_fen into v_mulaid from account a where a.person_id = v_authorizer;
    end if;
    -- Read whether or not the account pays: balc is the patient's balance after, and gongji_split
    -- takes nothing from it when p_use_account is false.
    select a.balance_fen into v_own from account a
     where a.person_id = p_patient_id and v_patient.scheme = 'EMPLOYEE';
    select w.balance_fen into v_wallet from wallet w where w.person_id = p_patient_id and p_use_account;
    v_room := gongji_mutual_aid_limits(v_grant, p_patient_id, v_patient.region_code, v_mulaid, false);
    v_wholly := gongji_wholly_self_paid(v_patient.region_code, p_med_type, p_wholly_fen);
    v_split := gongji_split(p_amount_fen, coalesce(p_over_limit_fen, 0), coalesce(p_wholly_fen, 0), v_own,
                            v_room.room_fen, v_wallet, p_use_account, v_wholly.account, v_wholly.mutual_aid,
                            case when v_wallet > 0 then gongji_wallet_order(v_patient.region_code) end);
    outcome := 'OK';
    authorizer_id := case when v_split.acct_mulaid_pay_fen > 0 then v_authorizer end;
    select v_split.acct_pay_fen, v_split.acct_mulaid_pay_fen, v_split.psn_cash_pay_fen, v_split.acct_over_limit_fen,
           v_split.acct_wholly_fen, v_split.mulaid_over_limit_fen, v_split.mulaid_wholly_fen, v_split.wallet_pay_fen,
           v_split.wallet_over_limit_fen, v_split.wallet_wholly_fen, v_wallet - v_split.wallet_pay_fen
      into acct_pay_fen, acct_mulaid_pay_fen, psn_cash_pay_fen, acct_over_limit_fen, acct_wholly_fen,
           mulaid_over_limit_fen, mulaid_wholly_fen, wallet_pay_fen, wallet_over_limit_fen, wallet_wholly_fen,
           wallet_balc_fen;
    insutype := gongji_insutype(v_patient.scheme);
    balc_fen := coalesce(v_own, 0) - v_split.acct_pay_fen;
    mulaid_limited_by := gongji_settlement_limit(v_split, p_wholly_fen, v_wholly.mutual_aid,
                                                 coalesce(v_room.limited_by, v_care.limited_by));
    grant_cap_left_fen := v_room.grant_cap_left_fen;
    beneficiary_cap_left_fen := v_room.beneficiary_cap_left_fen;
    care_region := v_care.care_region;
    care_scope := v_care.care_scope;
    return next;
end
$$;

-- The middle of a settlement (and of a hold, gongji_hold), after the patient and what was presented
-- passed: where care happens, the grant and then the wallet and accounts locked (gongji_lock_accounts,
-- told what the accounts may pay of the bill), the room the caps and the floor leave on the authorizer's,
-- and the split. outcome is null, or the refusal ('GRANT_NOT_FOUND'), nothing written. The balances are
-- those before the settlement; the waits are the grant's and the accounts' (the wallet's counted as an
-- account's).
--
-- Capturing a hold (p_hold, its row locked by the caller, all-null otherwise): the grant is the hold's,
-- which must still be live; the authorizer's account is locked whenever the hold took mutual aid (no
-- amount is given to gongji_lock_accounts: the hold's money is out of the balances, so a peek would
-- mislead); the hold's money then comes back
-- (gongji_hold_move), and the split is the hold's, exactly.
create or replace function gongji_settle_plan(
    p_patient person, p_institution_id text, p_amount_fen bigint, p_authorizer_id text, p_grant_id bigint,
    p_use_account boolean, p_over_limit_fen bigint, p_wholly_fen bigint, p_med_type text, p_hold settlement_hold,
    p_now timestamptz,
    out outcome text, out care_region text, out care_scope text, out grant_id bigint, out authorizer_id text,
    out own_fen bigint, out mulaid_fen bigint, out wallet_fen bigint, out split bill_split, out limited_by text,
    out wait_grant_s double precision, out wait_account_s double precision)
language plpgsql
as $$
declare
    v_capture  constant boolean := p_hold.hold_id is not null;
    v_care     record;
    v_grant    record;
    v_wholly   record;
    v_accounts record;
    v_room     record;
begin
    v_care := gongji_care(p_institution_id, p_patient.person_id, p_patient.region_code, p_authorizer_id, p_grant_id,
                          p_use_account);
    care_region := v_care.care_region;
    care_scope := v_care.care_scope;
    v_grant := gongji_lock_grant(p_patient.person_id, coalesce(p_hold.authorizer_id, p_authorizer_id),
                                 coalesce(p_hold.grant_id, p_grant_id),
                                 case when v_capture then p_hold.grant_id is not null else v_care.mutual_aid end);
    if v_grant.grant_id is null and (case when v_capture then p_hold.grant_id is not null
                                          else v_care.mutual_aid and num_nonnulls(p_authorizer_id, p_grant_id) > 0 end) then
        outcome := 'GRANT_NOT_FOUND'; return;
    end if;
    select v_grant.grant_id, v_grant.authorizer_id, v_grant.wait_s into grant_id, authorizer_id, wait_grant_s;
    v_wholly := gongji_wholly_self_paid(p_patient.region_code, p_med_type, p_wholly_fen);
    v_accounts := gongji_lock_accounts(
        p_patient.person_id, p_patient.scheme = 'EMPLOYEE' or coalesce(p_hold.acct_pay_fen, 0) > 0, v_grant.authorizer_id,
        case when not v_capture then p_amount_fen - case when v_wholly.account then 0 else p_wholly_fen end end,
        p_use_account, p_patient.region_code);
    wait_account_s := v_accounts.wait_s;
    if v_capture then
        perform gongji_hold_move(p_hold, 1, p_now);
        select v_accounts.own_fen + p_hold.acct_pay_fen, v_accounts.mulaid_fen + p_hold.acct_mulaid_pay_fen,
               v_accounts.wallet_fen + p_hold.wallet_pay_fen, p_hold.mulaid_limited_by
          into own_fen, mulaid_fen, wallet_fen, limited_by;
        split := row(p_hold.acct_pay_fen, p_hold.acct_mulaid_pay_fen, p_hold.psn_cash_pay_fen, p_hold.acct_over_limit_fen,
                     p_hold.acct_wholly_fen, p_hold.mulaid_over_limit_fen, p_hold.mulaid_wholly_fen,
                     p_hold.wallet_pay_fen, p_hold.wallet_over_limit_fen, p_hold.wallet_wholly_fen);
        return;
    end if;
    select v_accounts.own_fen, v_accounts.mulaid_fen, v_accounts.wallet_fen into own_fen, mulaid_fen, wallet_fen;
    v_room := gongji_mutual_aid_limits(v_grant.grant_id, p_patient.person_id, p_patient.region_code, mulaid_fen, true);
    split := gongji_split(p_amount_fen, coalesce(p_over_limit_fen, 0), coalesce(p_wholly_fen, 0), own_fen,
                          v_room.room_fen, wallet_fen, p_use_account, v_wholly.account, v_wholly.mutual_aid,
                          v_accounts.wallet_order);
    limited_by := gongji_settlement_limit(split, p_wholly_fen, v_wholly.mutual_aid,
                                          coalesce(v_room.limited_by, v_care.limited_by));
end
$$;

-- Settle answers the settlement row (a new one, or the one a replay finds) and how long it waited for
-- each of its locks, measured with clock_timestamp() around each locking statement: only the database
-- knows this split (from Python one call is one number). The caller feeds them to the lock-wait
-- histogram; a lock the call did not reach (a refusal, a replay) answers null and is not observed. Its
-- locks are taken by gongji_lock_key. A bill sent as its amount only has null p_over_limit_fen and
-- p_wholly_fen; p_insutype is the terminal's (null: it did not say), and the settlement records the
-- patient's. With p_hold_id it captures that hold (gongji_capture_hold, at p_now by the service's
-- clock), which must have been asked with the same content (p_content_digest: the request's digest
-- without the hold).
create or replace function gongji_settle(
    p_institution_id text, p_terminal_id text, p_request_id text, p_request_digest bytea,
    p_voucher_id uuid, p_voucher_names_patient boolean, p_voucher_expires_at timestamptz, p_voucher_binding_id bigint,
    p_voucher_grant_id bigint, p_cert_type text, p_patient_id text, p_amount_fen bigint, p_authorizer_id text,
    p_use_account boolean, p_over_limit_fen bigint, p_wholly_fen bigint, p_med_type text, p_insutype text,
    p_hold_id uuid, p_content_digest bytea, p_now timestamptz)
returns table (
    outcome text, replayed boolean, settled settlement,
    lock_wait_idempotency_s double precision, lock_wait_voucher_s double precision,
    lock_wait_grant_s double precision, lock_wait_account_s double precision)
language plpgsql
as $$
#variable_conflict use_column
declare
    v_seen    record;
    v_patient person;
    v_hold    settlement_hold;  -- the hold captured; all-null when none
    v_plan    record;           -- gongji_settle_plan: the grant, the balances, the split
begin
    lock_wait_idempotency_s := gongji_lock_key('settle/' || p_institution_id || '/' || p_request_id);
    v_seen := gongji_settle_replay(p_institution_id, p_request_id, p_request_digest);
    replayed := v_seen.seen is not null;
    if v_seen.seen = 'REPLAY' then
        select * into settled from settlement x where x.settlement_id = v_seen.seen_settlement_id;
        outcome := 'OK'; return next; return;
    elsif replayed then
        outcome := v_seen.seen; return next; return;
    end if;
    -- 2. The patient and the voucher, whose lock makes its settlements take turns: one uses it.
    select * into v_patient from person p where p.person_id = p_patient_id;
    lock_wait_voucher_s := gongji_lock_key('voucher/' || p_voucher_id);
    outcome := gongji_presented_refusal(v_patient, p_voucher_id, p_voucher_names_patient, p_voucher_expires_at,
                                        p_voucher_binding_id, p_voucher_grant_id, p_cert_type, p_authorizer_id,
                                        p_insutype);
    if outcome = 'VOUCHER_PATIENT_MISMATCH' then  -- the fraud signal, told downstream (events.sql)
        perform gongji_note_mismatch(p_institution_id, p_request_id, p_terminal_id, p_patient_id, p_voucher_id);
    end if;
    if outcome is null and p_hold_id is not null then
        select * into v_hold from settlement_hold h where h.hold_id = p_hold_id for update;
        outcome := gongji_capture_refusal(v_hold, p_institution_id, p_content_digest, p_now,
                                          gongji_china_year(now()), p_voucher_grant_id);
        if outcome = 'HOLD_EXPIRED' then
            -- The one write of a refusal: the hold past its time gives its money back now, as the expiry
            -- work would, so that the patient's next quote sees it (what a late accept of a transfer does).
            perform gongji_end_hold(v_hold, 'EXPIRED', p_now, null);
        end if;
    end if;
    if outcome is not null then return next; return; end if;
    -- 3. to 5. Where care happens, the grant, the wallet and the accounts, the room, the split.
    v_plan := gongji_settle_plan(v_patient, p_institution_id, p_amount_fen, p_authorizer_id, p_voucher_grant_id,
                                 p_use_account, p_over_limit_fen, p_wholly_fen, p_med_type, v_hold, p_now);
    lock_wait_grant_s := v_plan.wait_grant_s;
    lock_wait_account_s := v_plan.wait_account_s;
    outcome := v_plan.outcome;
    if outcome is not null then return next; return; end if;
    -- 6. The write.
    settled := gongji_settle_write(
        gen_random_uuid(), p_institution_id, p_terminal_id, p_request_id, p_request_digest, p_voucher_id, p_patient_id,
        v_plan.grant_id, v_plan.authorizer_id, p_amount_fen, v_plan.own_fen, v_plan.mulaid_fen, v_plan.wallet_fen,
        v_plan.split, v_plan.limited_by, p_cert_type, v_patient.region_code, v_plan.care_region, v_plan.care_scope,
        p_over_limit_fen, p_wholly_fen, p_med_type, gongji_insutype(v_patient.scheme));
    if v_hold.hold_id is not null then
        perform gongji_end_hold(v_hold, 'CAPTURED', p_now, settled.settlement_id);
    end if;
    outcome := 'OK';
    return next;
end
$$;
