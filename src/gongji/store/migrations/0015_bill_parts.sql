-- The bill's parts, the kind of care and the insurance (issue 17). A settlement records how it read its
-- bill ('AMOUNT': the amount only, all of it within the policy scope, as every settlement before this;
-- 'PARTS': the parts the terminal sent), the parts over the limit and wholly self-paid (the part within
-- the scope is the rest of the amount), and what each account paid of those two: the cash paid the
-- rest of each part. It records its med_type when the terminal sent one and its insutype (the patient's
-- scheme at the time, or what the terminal sent, which must agree with it).
--
-- Settlements of before read 'AMOUNT' with zero parts, which the column defaults say without rewriting
-- the table; their insutype stays null (reconciliation falls back to the patient's scheme). The CHECKs
-- are NOT VALID: the rows of before hold the defaults, which pass them, so there is nothing to scan for.
set local lock_timeout = '10s';

alter table settlement
    add column bill_read text not null default 'AMOUNT',
    add column over_limit_fen bigint not null default 0,
    add column wholly_self_paid_fen bigint not null default 0,
    add column acct_over_limit_fen bigint not null default 0,
    add column acct_wholly_fen bigint not null default 0,
    add column mulaid_over_limit_fen bigint not null default 0,
    add column mulaid_wholly_fen bigint not null default 0,
    add column med_type text,
    add column insutype text,
    add constraint settlement_bill_read check (bill_read in ('AMOUNT', 'PARTS')) not valid,
    add constraint settlement_med_type check (med_type in ('11', '13', '14', '21', '41')) not valid,
    add constraint settlement_insutype check (insutype in ('310', '390')) not valid,
    add constraint settlement_parts check (
        least(over_limit_fen, wholly_self_paid_fen, acct_over_limit_fen, acct_wholly_fen, mulaid_over_limit_fen,
              mulaid_wholly_fen) >= 0
        and over_limit_fen + wholly_self_paid_fen <= amount_fen
        and acct_over_limit_fen + acct_wholly_fen <= acct_pay_fen
        and mulaid_over_limit_fen + mulaid_wholly_fen <= acct_mulaid_pay_fen
        and acct_over_limit_fen + mulaid_over_limit_fen <= over_limit_fen
        and acct_wholly_fen + mulaid_wholly_fen <= wholly_self_paid_fen
        and (bill_read = 'PARTS' or over_limit_fen + wholly_self_paid_fen = 0)) not valid;

-- Per kind of care (med_type codes), what may not pay the wholly self-paid items of a patient of the
-- region: the personal account (then cash pays them), and mutual aid (then the own account may). Null:
-- nothing excluded, the accounts pay them.
alter table region_policy
    add column wholly_self_paid_no_account text[],
    add column wholly_self_paid_no_mutual_aid text[];

-- What each source pays of a bill, by part (gongji_split): the accounts' parts over the limit and wholly
-- self-paid; each source's part within the scope is the rest of what it paid.
create type bill_split as (
    acct_pay_fen bigint, acct_mulaid_pay_fen bigint, psn_cash_pay_fen bigint,
    acct_over_limit_fen bigint, acct_wholly_fen bigint, mulaid_over_limit_fen bigint, mulaid_wholly_fen bigint);

-- The settlement functions take the bill's parts, its med_type and insutype; new versions from store/sql.
drop function if exists gongji_split(bigint, bigint, bigint, boolean);
drop function if exists gongji_presented_refusal(person, uuid, boolean, timestamptz, bigint, bigint, text, text);
drop function if exists gongji_settle(text, text, text, bytea, uuid, boolean, timestamptz, bigint, bigint, text, text,
                                      bigint, text, boolean);
drop function if exists gongji_quote(text, uuid, boolean, timestamptz, bigint, bigint, text, text, bigint, text,
                                     boolean);
drop function if exists gongji_settle_write(uuid, text, text, text, bytea, uuid, text, bigint, text, bigint, bigint,
                                            bigint, bigint, bigint, text, text, text, text, text);
