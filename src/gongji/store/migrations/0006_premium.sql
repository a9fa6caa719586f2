-- An employee's personal account pays a close relative's resident-insurance premium (居民医保个人缴费),
-- 国办发〔2024〕38号 (a): the premium of each province or 统筹区 and year with its collection window,
-- the payments (one unrefunded per beneficiary and year), and their ledger entries. The functions that
-- pay and refund are code: store/sql/premium.sql.

-- ALTER TABLE ledger_entry below needs the ACCESS EXCLUSIVE lock. Waiting for it behind the settlements
-- in flight would queue every later settlement behind the waiting ALTER, so an upgrade under load would
-- stop the service for as long as the wait lasts. With a lock timeout it fails instead (the migration is
-- one transaction: nothing is applied) and is run again, at a quieter moment if need be.
set local lock_timeout = '10s';

-- The premium of a contribution year in a province ('61') or a 统筹区 ('610100'), the same keys as
-- region_policy: the most specific applies to a beneficiary's region. Collected on the calendar days
-- opens_on to closes_on, both included (China's calendar day).
create table premium_rate (
    region_key text not null check (region_key ~ '^[1-9][0-9]([0-9]{4})?$' and region_key !~ '^[0-9]{2}0000$'),
    year       integer not null check (year between 2000 and 2999),
    amount_fen bigint not null check (amount_fen > 0),
    opens_on   date not null,
    closes_on  date not null,
    updated_at timestamptz not null default now(),
    primary key (region_key, year),
    check (opens_on <= closes_on)
);

-- A premium paid from payer_id's account for beneficiary_id's year, under the live grant grant_id.
-- region_key is the rate applied; region_code the beneficiary's 统筹区 when paid, which the insurer's
-- report is by. A refund (an operator's) sets refunded_at with its reason and gives the money back;
-- the row stays. credential_id: the app backend's credential that asked, refund_credential_id the
-- operator's that refunded (no foreign key: deleting a credential revokes it, and must not be refused).
create table premium_payment (
    payment_id           uuid primary key,
    request_id           text not null unique,
    credential_id        bigint not null,
    payer_id             text not null references account (person_id),
    beneficiary_id       text not null references person (person_id),
    grant_id             bigint not null references mutual_aid_grant (grant_id),
    year                 integer not null,
    region_key           text not null,
    region_code          text not null,
    amount_fen           bigint not null check (amount_fen > 0),
    created_at           timestamptz not null default now(),
    refunded_at          timestamptz,
    refund_reason        text,
    refund_credential_id bigint,
    check (payer_id <> beneficiary_id),
    check ((refunded_at is null) = (refund_reason is null)),
    check ((refunded_at is null) = (refund_credential_id is null))
);
-- One premium per beneficiary and year: a second payer is refused, and a refund makes room for a new one.
create unique index premium_payment_unrefunded on premium_payment (beneficiary_id, year) where refunded_at is null;
-- The report per 统筹区 and per day: payments by the day they were made, refunds by the day of the refund.
create index premium_payment_day on premium_payment (created_at, region_code);
create index premium_payment_refund_day on premium_payment (refunded_at, region_code) where refunded_at is not null;

-- A premium debits the payer (PREMIUM, counterpart_id the beneficiary) and its refund credits it back
-- (PREMIUM_REFUND); either entry belongs to its payment and to nothing else.
--
-- The constraints are added NOT VALID: validating them would read the whole ledger while this
-- transaction holds the ACCESS EXCLUSIVE lock, stopping every settlement for the length of the scan.
-- The rows written before satisfy them by construction (the new column is null in all of them, and
-- the list of kinds only grows), and PostgreSQL enforces them on every row written from now on.
-- For the same reason there is no index on premium_payment_id (building one reads the whole ledger
-- and holds off writes meanwhile): nothing looks entries up by payment but the audit, which reads the
-- ledger whole anyway, and a replay, which reads its payer's entries (ledger_entry_person).
alter table ledger_entry
    add column premium_payment_id uuid,
    add constraint ledger_entry_premium_payment_id_fkey
        foreign key (premium_payment_id) references premium_payment (payment_id) not valid,
    drop constraint ledger_entry_kind_check,
    add constraint ledger_entry_kind_check check (kind in (
        'CREDIT', 'SETTLEMENT', 'MUTUAL_AID', 'REFUND', 'REVERSAL', 'PREMIUM', 'PREMIUM_REFUND')) not valid,
    drop constraint ledger_entry_check,
    add constraint ledger_entry_one_source
        check (num_nonnulls(settlement_id, credit_id, premium_payment_id) = 1) not valid,
    add constraint ledger_entry_premium_kind
        check ((kind in ('PREMIUM', 'PREMIUM_REFUND')) = (premium_payment_id is not null)) not valid;
