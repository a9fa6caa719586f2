-- Reversal (2601) of a refund (2208), issue 17: the national platform's 2601 reverses any earlier
-- transaction by its original message id, a Cancel as well as a Settle. The functions are code
-- (store/sql/lifecycle.sql); this is what they need to keep.
--
-- As in 0006: the ALTERs of ledger_entry need its ACCESS EXCLUSIVE lock, so a lock timeout makes an
-- upgrade under load fail (nothing applied, run it again) rather than queue every settlement behind it.
set local lock_timeout = '10s';

-- A Cancel's request id the POS reversed, with the refund undone when one had been committed. The
-- counterpart of `reversal` (whose request ids are Settle's): a Cancel and a Settle of one institution
-- may carry the same request id, so the two namespaces stay apart. gongji_cancel refuses a late Cancel
-- whose id is here (ALREADY_REVERSED).
create table refund_reversal (
    institution_id text not null,
    request_id     text not null,   -- the reversed Cancel's request id
    refund_id      uuid references refund (refund_id),
    created_at     timestamptz not null default now(),
    primary key (institution_id, request_id)
);
-- A refund is undone at most once; and 3201 counts a day's reversals of refunds by institution.
create unique index refund_reversal_refund on refund_reversal (refund_id) where refund_id is not null;
create index refund_reversal_institution_day on refund_reversal (institution_id, created_at);

-- Set when the refund was reversed: its money is back where the settlement had put it, and the
-- settlement's refunded_fen no longer counts it. A constant-free nullable column: no table rewrite.
alter table refund add column reversed_at timestamptz;

-- Reversing a refund takes its money back from the accounts it credited: one REFUND_REVERSAL entry
-- (negative) per account, naming the refund and its settlement. NOT VALID for the reason 0006 gives:
-- every row written before satisfies the new checks (the list of kinds only grows), and validating
-- would read the whole ledger under the ACCESS EXCLUSIVE lock.
alter table ledger_entry
    drop constraint ledger_entry_kind_check,
    add constraint ledger_entry_kind_check check (kind in (
        'CREDIT', 'SETTLEMENT', 'MUTUAL_AID', 'REFUND', 'REVERSAL', 'REFUND_REVERSAL', 'PREMIUM', 'PREMIUM_REFUND'))
        not valid,
    drop constraint ledger_entry_refund_kind,
    add constraint ledger_entry_refund_kind
        check ((kind in ('REFUND', 'REVERSAL', 'REFUND_REVERSAL')) = (refund_id is not null)) not valid;
