-- Wallet money pays at settlement (issue 18): a settlement records what the patient's wallet paid, by
-- part, and the wallet's balance after; a refund records what it gave back to the wallet; the wallet's
-- entries name the settlement (and refund) they belong to, as the account's ledger entries do. Where the
-- wallet stands in the deduction order is the patient's region policy (wallet_order; null: after the
-- own account, before mutual aid).
--
-- The settlement's and refund's sums now count the wallet. Rows of before paid nothing from a wallet
-- (the column defaults say so without rewriting the tables), so they pass the new CHECKs, which are
-- NOT VALID for the reason 0006 gives.
set local lock_timeout = '10s';

alter table settlement
    add column wallet_pay_fen bigint not null default 0,
    add column wallet_over_limit_fen bigint not null default 0,
    add column wallet_wholly_fen bigint not null default 0,
    add column wallet_balc_fen bigint,   -- null: the patient had no wallet, or it was not drawn on
    drop constraint settlement_check1,
    add constraint settlement_sources
        check (acct_pay_fen + acct_mulaid_pay_fen + wallet_pay_fen + psn_cash_pay_fen = amount_fen) not valid,
    add constraint settlement_wallet check (
        least(wallet_over_limit_fen, wallet_wholly_fen, coalesce(wallet_balc_fen, 0)) >= 0
        and wallet_over_limit_fen + wallet_wholly_fen <= wallet_pay_fen
        and acct_over_limit_fen + mulaid_over_limit_fen + wallet_over_limit_fen <= over_limit_fen
        and acct_wholly_fen + mulaid_wholly_fen + wallet_wholly_fen <= wholly_self_paid_fen) not valid;

alter table refund
    add column wallet_pay_fen bigint not null default 0 check (wallet_pay_fen >= 0),
    drop constraint refund_check,
    add constraint refund_sources
        check (acct_pay_fen + acct_mulaid_pay_fen + wallet_pay_fen + psn_cash_pay_fen = amount_fen) not valid;

-- The wallet's entries: TRANSFER_IN as before; SETTLEMENT when it pays, REFUND or REVERSAL when a refund
-- gives back, REFUND_REVERSAL when that refund is taken back. Few rows yet: the new CHECKs are validated.
alter table wallet_entry
    add column settlement_id uuid references settlement (settlement_id),
    add column refund_id uuid references refund (refund_id),
    drop constraint wallet_entry_kind_check,
    add constraint wallet_entry_kind_check
        check (kind in ('TRANSFER_IN', 'SETTLEMENT', 'REFUND', 'REVERSAL', 'REFUND_REVERSAL')),
    drop constraint wallet_entry_check,
    add constraint wallet_entry_one_source check (num_nonnulls(transfer_id, settlement_id) = 1),
    add constraint wallet_entry_transfer_kind check ((kind = 'TRANSFER_IN') = (transfer_id is not null)),
    add constraint wallet_entry_refund_kind
        check ((kind in ('REFUND', 'REVERSAL', 'REFUND_REVERSAL')) = (refund_id is not null));
create index wallet_entry_settlement on wallet_entry (settlement_id) where settlement_id is not null;

alter table region_policy
    add column wallet_order text check (wallet_order in ('BEFORE_ACCOUNT', 'AFTER_ACCOUNT', 'AFTER_MUTUAL_AID'));

-- What the wallet pays of a bill, by part, as the accounts'.
alter type bill_split
    add attribute wallet_pay_fen bigint,
    add attribute wallet_over_limit_fen bigint,
    add attribute wallet_wholly_fen bigint;

-- New versions, taking the wallet, from store/sql.
drop function if exists gongji_split(bigint, bigint, bigint, bigint, bigint, boolean, boolean, boolean);
drop function if exists gongji_quote(text, uuid, boolean, timestamptz, bigint, bigint, text, text, bigint, text,
                                     boolean, bigint, bigint, text, text);
drop function if exists gongji_settle_write(uuid, text, text, text, bytea, uuid, text, bigint, text, bigint, bigint,
                                            bigint, bill_split, text, text, text, text, text, bigint, bigint, text,
                                            text);
drop function if exists gongji_refund_split(bigint, bigint, bigint, bigint);
drop function if exists gongji_lock_accounts(text, boolean, text, bigint, boolean);
drop function if exists gongji_refund_reversal_refusal(boolean, bigint, bigint, bigint, bigint);
drop function if exists gongji_lock_refunded_accounts(refund, settlement);
