-- gongji's tables. Money is bigint fen; a balance never goes below zero (checked here as well as in code).

create table person (
    person_id   text primary key,                    -- 社会保障号码
    name        text not null,
    birth_date  date not null,
    region_code text not null check (region_code ~ '^[1-9][0-9]{5}$'),   -- 统筹区
    scheme      text not null check (scheme in ('EMPLOYEE', 'RESIDENT')),
    status      text not null check (status in ('ACTIVE', 'SUSPENDED', 'TERMINATED')),
    created_at  timestamptz not null default now(),
    updated_at  timestamptz not null default now()
);

-- One personal account per employee-insured person, keyed like the person so that it can later be
-- distributed by person_id. Settlements lock these rows in ascending person_id (collation "C") order.
create table account (
    person_id   text primary key references person (person_id),
    balance_fen bigint not null default 0 check (balance_fen >= 0),
    updated_at  timestamptz not null default now()
);

create table mutual_aid_grant (
    grant_id       bigint generated always as identity primary key,
    authorizer_id  text not null references person (person_id),
    beneficiary_id text not null references person (person_id),
    relationship   text not null,
    status         text not null default 'LIVE' check (status in ('LIVE', 'REVOKED', 'ENDED')),
    created_at     timestamptz not null default now(),
    ended_at       timestamptz,
    end_reason     text,
    check (authorizer_id <> beneficiary_id),
    check ((status = 'LIVE') = (ended_at is null))
);
create unique index mutual_aid_grant_live_pair
    on mutual_aid_grant (authorizer_id, beneficiary_id) where status = 'LIVE';
create index mutual_aid_grant_live_held
    on mutual_aid_grant (beneficiary_id, created_at, grant_id) where status = 'LIVE';
create index mutual_aid_grant_authorizer on mutual_aid_grant (authorizer_id);

create table institution (
    institution_id text primary key,                 -- 定点医药机构
    name           text not null,
    created_at     timestamptz not null default now()
);

-- Bearer tokens, stored as SHA-256 of the token. Tokens are 256-bit random values, so a fast hash is
-- enough: there is nothing to brute-force, unlike a human password.
create table credential (
    credential_id  bigint generated always as identity primary key,
    token_sha256   bytea not null unique check (length(token_sha256) = 32),
    kind           text not null check (kind in ('TERMINAL', 'APP', 'OPERATOR')),
    institution_id text references institution (institution_id),
    terminal_id    text,
    label          text not null,
    created_at     timestamptz not null default now(),
    revoked_at     timestamptz,
    check ((kind = 'TERMINAL') = (institution_id is not null and terminal_id is not null))
);

create table voucher (
    voucher_id    uuid primary key,
    person_id     text not null references person (person_id),   -- the patient the voucher names
    requester_id  text not null references person (person_id),   -- who asked for it (audit)
    issued_at     timestamptz not null default now(),
    expires_at    timestamptz not null,
    used_at       timestamptz,
    settlement_id uuid
);

-- Idempotency of Settle (scope 'settle/<institution>'), Credit (scope 'credit') and what comes later:
-- the first successful request with a key wins, a retry with the same digest replays it, a retry
-- with another digest is refused. Refusals are not recorded, so a refused request may be retried.
create table idempotency_key (
    scope          text not null,
    request_id     text not null,
    request_digest bytea not null,
    resource_id    uuid not null,
    created_at     timestamptz not null default now(),
    primary key (scope, request_id)
);

create table credit (
    credit_id  uuid primary key,
    request_id text not null unique,
    person_id  text not null references account (person_id),
    amount_fen bigint not null check (amount_fen > 0),
    memo       text not null default '',
    created_at timestamptz not null default now()
);

create table settlement (
    settlement_id       uuid primary key,
    institution_id      text not null references institution (institution_id),
    terminal_id         text not null,
    request_id          text not null,
    patient_id          text not null references person (person_id),
    authorizer_id       text references person (person_id),
    grant_id            bigint references mutual_aid_grant (grant_id),
    voucher_id          uuid not null,
    amount_fen          bigint not null check (amount_fen > 0),
    acct_pay_fen        bigint not null check (acct_pay_fen >= 0),
    acct_mulaid_pay_fen bigint not null check (acct_mulaid_pay_fen >= 0),
    psn_cash_pay_fen    bigint not null check (psn_cash_pay_fen >= 0),
    balc_fen            bigint not null check (balc_fen >= 0),
    refunded_fen        bigint not null default 0 check (refunded_fen between 0 and amount_fen),
    created_at          timestamptz not null default now(),
    unique (institution_id, request_id),
    check (acct_pay_fen + acct_mulaid_pay_fen + psn_cash_pay_fen = amount_fen),
    check ((authorizer_id is null) = (grant_id is null))
);
create index settlement_institution_day on settlement (institution_id, created_at);

-- Every change of a balance, signed: the books are the sum of these (交易记录).
create table ledger_entry (
    entry_id          bigint generated always as identity primary key,
    person_id         text not null references account (person_id),
    amount_fen        bigint not null check (amount_fen <> 0),
    balance_after_fen bigint not null check (balance_after_fen >= 0),
    kind              text not null check (kind in ('CREDIT', 'SETTLEMENT', 'MUTUAL_AID', 'REFUND', 'REVERSAL')),
    settlement_id     uuid references settlement (settlement_id),
    credit_id         uuid references credit (credit_id),
    counterpart_id    text,            -- for MUTUAL_AID: the family member who used the money
    created_at        timestamptz not null default now(),
    check (num_nonnulls(settlement_id, credit_id) = 1)
);
create index ledger_entry_person on ledger_entry (person_id, entry_id desc);
create index ledger_entry_settlement on ledger_entry (settlement_id) where settlement_id is not null;
