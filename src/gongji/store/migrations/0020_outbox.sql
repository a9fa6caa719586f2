-- Events for everyone downstream (issue 19, part 3): a transactional outbox. Every state change that
-- matters outside gongji (a settlement, a refund, a reversal, a credit, a grant given or ended, a binding,
-- a premium paid or refunded, a wallet transfer, a hold, a real-name mismatch) writes an event row in the
-- transaction that makes the change (store/sql/events.sql: triggers, so that no path can forget one).
-- EventService.StreamEvents reads them in order from a cursor the consumer keeps.
--
-- Two numbers per event. event_id, given when the row is written, is the event's stable identity: a
-- consumer told an event twice (delivery is at least once) drops the second by it. position, given after
-- the commit by one sequencer at a time (gongji_sequence_events), is the stream's order and the cursor:
-- ids are given in the order of writing, not of committing, so a consumer reading by id could pass an
-- event whose transaction commits after a later one's; positions are only given to committed events,
-- in event_id order, after every position before them.
--
-- The outbox starts empty: the history before this migration is in the tables themselves.
set local lock_timeout = '10s';

create table outbox_event (
    event_id    bigint generated always as identity primary key,
    position    bigint unique,   -- null until sequenced
    type        text not null,   -- settlement.settled, refund.reversed, ... (docs/events.md)
    occurred_at timestamptz not null,
    -- The people whose books or family the event concerns, for ordering per account and for masking.
    person_ids  text[] not null,
    data        jsonb not null
);
create index outbox_event_unsequenced on outbox_event (event_id) where position is null;

-- One row: the last position given, and how far retention has deleted (a cursor before it has missed
-- events, and is told so).
create table outbox_head (
    only_row       boolean primary key default true check (only_row),
    position       bigint not null default 0,
    pruned_through bigint not null default 0
);
insert into outbox_head default values;

-- The consumers that name themselves, and the last position each read: for the lag metric and alert.
-- Named per credential, so that one credential cannot move another's.
create table event_consumer (
    credential_id bigint not null references credential (credential_id),
    name          text not null,
    position      bigint not null,
    first_seen_at timestamptz not null default now(),
    seen_at       timestamptz not null default now(),
    primary key (credential_id, name)
);

-- The fraud signal: e-vouchers presented for another patient than the one they name (the settlement is
-- refused). One row per terminal request, so a retried refusal is one signal, told once.
create table voucher_mismatch (
    institution_id text not null,
    request_id     text not null,
    terminal_id    text not null,
    patient_id     text not null,
    voucher_id     uuid,            -- null: a card (社保卡, ID card) presented, not an e-voucher
    created_at     timestamptz not null default now(),
    primary key (institution_id, request_id)
);

-- A fourth kind of caller: a downstream system that reads events and nothing else, with ID numbers masked.
alter table credential drop constraint credential_kind_check;
alter table credential add constraint credential_kind_check
    check (kind in ('TERMINAL', 'APP', 'OPERATOR', 'CONSUMER'));
