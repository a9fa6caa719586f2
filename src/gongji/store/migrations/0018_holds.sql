-- Holds at the till (issue 18): a Quote may hold its split for a short time while the patient confirms;
-- the Settle that names the hold captures exactly what was held, and the expiry work releases one nobody
-- captured. A hold is two-phase, as a transfer is: the held money leaves the accounts and the wallet
-- when held (HOLD entries), so no other settlement can spend it, and comes back exactly once: released
-- or expired (HOLD_RELEASE), or captured, when it comes back and the settlement takes it in the same
-- transaction. Mutual aid held counts towards the caps while held, as paid mutual aid does.
set local lock_timeout = '10s';

create table settlement_hold (
    hold_id               uuid primary key,
    institution_id        text not null references institution (institution_id),
    terminal_id           text not null,
    request_id            text not null,   -- the Quote's: a retry answers the same hold
    request_digest        bytea not null,  -- what the Quote asked (as a Settle's digest): a capture asks the same
    patient_id            text not null references person (person_id),
    authorizer_id         text,
    grant_id              bigint references mutual_aid_grant (grant_id),
    -- The bill as the Quote sent it, which the capturing Settle must send again.
    amount_fen            bigint not null check (amount_fen > 0),
    over_limit_fen        bigint,          -- null: the amount only
    wholly_self_paid_fen  bigint,
    med_type              text,
    -- The split held, by source and part (as settlement's columns).
    acct_pay_fen          bigint not null check (acct_pay_fen >= 0),
    acct_mulaid_pay_fen   bigint not null check (acct_mulaid_pay_fen >= 0),
    wallet_pay_fen        bigint not null check (wallet_pay_fen >= 0),
    psn_cash_pay_fen      bigint not null check (psn_cash_pay_fen >= 0),
    acct_over_limit_fen   bigint not null,
    acct_wholly_fen       bigint not null,
    mulaid_over_limit_fen bigint not null,
    mulaid_wholly_fen     bigint not null,
    wallet_over_limit_fen bigint not null,
    wallet_wholly_fen     bigint not null,
    mulaid_limited_by     text,
    -- The China calendar year whose caps count the mutual aid held (the year the room was read for).
    cap_year              integer not null,
    state                 text not null check (state in ('PENDING', 'CAPTURED', 'RELEASED', 'EXPIRED')),
    created_at            timestamptz not null,
    expires_at            timestamptz not null check (expires_at > created_at),
    resolved_at           timestamptz,
    settlement_id         uuid references settlement (settlement_id),
    unique (institution_id, request_id),
    check (acct_pay_fen + acct_mulaid_pay_fen + wallet_pay_fen + psn_cash_pay_fen = amount_fen),
    check ((authorizer_id is null) = (grant_id is null)),
    check ((state = 'PENDING') = (resolved_at is null)),
    check ((state = 'CAPTURED') = (settlement_id is not null))
);
-- The expiry work reads the pending holds in expiry order; GetAccount and GetWallet sum what a person's
-- pending holds hold.
create index settlement_hold_due on settlement_hold (expires_at) where state = 'PENDING';
create index settlement_hold_patient on settlement_hold (patient_id) where state = 'PENDING';
create index settlement_hold_authorizer on settlement_hold (authorizer_id) where state = 'PENDING';

-- The held money in the books: HOLD when it leaves, HOLD_RELEASE when it comes back (released, expired,
-- or captured, the settlement then taking it as a SETTLEMENT or MUTUAL_AID entry). NOT VALID for the
-- reason 0006 gives; wallet_entry is small and is validated.
alter table ledger_entry
    add column hold_id uuid,
    add constraint ledger_entry_hold_id_fkey foreign key (hold_id) references settlement_hold (hold_id) not valid,
    drop constraint ledger_entry_kind_check,
    add constraint ledger_entry_kind_check check (kind in (
        'CREDIT', 'SETTLEMENT', 'MUTUAL_AID', 'REFUND', 'REVERSAL', 'REFUND_REVERSAL', 'PREMIUM', 'PREMIUM_REFUND',
        'TRANSFER_OUT', 'TRANSFER_RETURN', 'HOLD', 'HOLD_RELEASE')) not valid,
    drop constraint ledger_entry_one_source,
    add constraint ledger_entry_one_source
        check (num_nonnulls(settlement_id, credit_id, premium_payment_id, transfer_id, hold_id) = 1) not valid,
    add constraint ledger_entry_hold_kind check ((kind in ('HOLD', 'HOLD_RELEASE')) = (hold_id is not null)) not valid;

alter table wallet_entry
    add column hold_id uuid references settlement_hold (hold_id),
    drop constraint wallet_entry_kind_check,
    add constraint wallet_entry_kind_check
        check (kind in ('TRANSFER_IN', 'SETTLEMENT', 'REFUND', 'REVERSAL', 'REFUND_REVERSAL', 'HOLD', 'HOLD_RELEASE')),
    drop constraint wallet_entry_one_source,
    add constraint wallet_entry_one_source check (num_nonnulls(transfer_id, settlement_id, hold_id) = 1),
    add constraint wallet_entry_hold_kind check ((kind in ('HOLD', 'HOLD_RELEASE')) = (hold_id is not null));

-- Settle takes the hold it captures; the new version from store/sql.
drop function if exists gongji_settle(text, text, text, bytea, uuid, boolean, timestamptz, bigint, bigint, text, text,
                                      bigint, text, boolean, bigint, bigint, text, text);
