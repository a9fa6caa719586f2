-- The 医保钱包 (issue 18): a person's medical-insurance wallet, and two-phase transfers into it from a
-- close relative's personal account.
--
-- A transfer leaves the sender's account when sent (a TRANSFER_OUT ledger entry) and is PENDING; it
-- resolves exactly once: POSTED when the recipient accepts (a TRANSFER_IN wallet entry), VOIDED when the
-- recipient declines or EXPIRED when nobody accepted it by its due time (a TRANSFER_RETURN ledger entry
-- gives the money back to the sender). resolved_at is set with the state, never again.
set local lock_timeout = '10s';

create table wallet (
    person_id   text primary key references person (person_id),
    balance_fen bigint not null default 0 check (balance_fen >= 0),
    opened_at   timestamptz not null,
    updated_at  timestamptz not null
);

create table wallet_transfer (
    transfer_id    uuid primary key,
    sender_id      text not null references account (person_id),
    recipient_id   text not null references wallet (person_id),
    relationship   text not null,
    amount_fen     bigint not null check (amount_fen > 0),
    state          text not null check (state in ('PENDING', 'POSTED', 'VOIDED', 'EXPIRED')),
    -- The sender's request id (idempotency: one transfer per sender and id), and China's calendar day
    -- of the send, which the daily count reads.
    request_id     text not null,
    china_day      date not null,
    sent_at        timestamptz not null,
    due_at         timestamptz not null check (due_at > sent_at),
    resolved_at    timestamptz,
    check ((state = 'PENDING') = (resolved_at is null)),
    check (sender_id <> recipient_id),
    unique (sender_id, request_id)
);
-- At most one pending transfer per sender: the rule, and what makes two racing sends one.
create unique index wallet_transfer_pending_sender on wallet_transfer (sender_id) where state = 'PENDING';
-- The expiry work reads the due pending transfers in due order.
create index wallet_transfer_due on wallet_transfer (due_at) where state = 'PENDING';
create index wallet_transfer_sender_day on wallet_transfer (sender_id, china_day);
create index wallet_transfer_recipient on wallet_transfer (recipient_id, sent_at desc);

-- A wallet's entries: money in from a transfer (TRANSFER_IN). Its balance is their sum.
create table wallet_entry (
    entry_id          bigint generated always as identity primary key,
    person_id         text not null references wallet (person_id),
    amount_fen        bigint not null check (amount_fen <> 0),
    balance_after_fen bigint not null check (balance_after_fen >= 0),
    kind              text not null check (kind in ('TRANSFER_IN')),
    transfer_id       uuid references wallet_transfer (transfer_id),
    counterpart_id    text,            -- the sender
    created_at        timestamptz not null,
    check ((kind = 'TRANSFER_IN') = (transfer_id is not null))
);
create index wallet_entry_person on wallet_entry (person_id, entry_id desc);

-- The sender's side in the account's ledger: TRANSFER_OUT when sent, TRANSFER_RETURN when declined or
-- expired. NOT VALID for the reason 0006 gives: every row written before satisfies the new checks
-- (the new column is null in all of them, and the list of kinds only grows), and validating would read
-- the whole ledger under the ACCESS EXCLUSIVE lock.
alter table ledger_entry
    add column transfer_id uuid,
    add constraint ledger_entry_transfer_id_fkey
        foreign key (transfer_id) references wallet_transfer (transfer_id) not valid,
    drop constraint ledger_entry_kind_check,
    add constraint ledger_entry_kind_check check (kind in (
        'CREDIT', 'SETTLEMENT', 'MUTUAL_AID', 'REFUND', 'REVERSAL', 'REFUND_REVERSAL', 'PREMIUM', 'PREMIUM_REFUND',
        'TRANSFER_OUT', 'TRANSFER_RETURN')) not valid,
    drop constraint ledger_entry_one_source,
    add constraint ledger_entry_one_source
        check (num_nonnulls(settlement_id, credit_id, premium_payment_id, transfer_id) = 1) not valid,
    add constraint ledger_entry_transfer_kind
        check ((kind in ('TRANSFER_OUT', 'TRANSFER_RETURN')) = (transfer_id is not null)) not valid;

-- The sender's region decides the limits of a send; null: the published national value
-- (gongji.domain.wallet.WalletPolicy says which).
alter table region_policy
    add column wallet_relationships text[],
    add column wallet_scope text check (wallet_scope in ('REGION', 'PROVINCE', 'NATIONAL')),
    add column wallet_sends_per_day integer check (wallet_sends_per_day between 0 and 100),
    add column wallet_send_max_fen bigint check (wallet_send_max_fen between 1 and 100000000),
    add column wallet_quiet_from time,
    add column wallet_quiet_until time,
    add column wallet_expires_at time;
