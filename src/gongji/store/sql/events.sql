-- The outbox (migration 0020; docs/events.md): every state change that matters downstream writes an event
-- in the transaction that makes it, and a sequencer gives committed events their positions in the stream.
--
-- Code, not history: re-applied by the migration runner whenever this file changes (see settle.sql).
--
-- The events are written by triggers on the tables whose rows are the changes, so that no path that
-- settles, refunds, grants or transfers can forget its event. They are constraint triggers, deferred to
-- the commit: each event row is written when its transaction commits, while the transaction still holds
-- every row lock it took. Two transactions that touch one account take its lock in turn, so the second
-- writes its events only after the first committed: event_id follows the commit order of each account,
-- whatever order a transaction's own statements ran in (a credit writes its row before it updates the
-- balance; a settlement takes the grant's lock before the account's).
--
-- An event's data names its fields as the proto message of its kind does (gongji.v1.events.proto): the
-- server reads it into that message. Money in fen, as integers; no name, phone or document number.

-- PL/pgSQL, not SQL: a SQL function's INSERT cannot be inlined and is planned again at every call, about
-- half the outbox's cost per settlement (bench/README.md); PL/pgSQL keeps its plan for the session.
create or replace function gongji_event(p_type text, p_person_ids text[], p_data jsonb) returns void
language plpgsql
as $$
begin
    insert into outbox_event (type, occurred_at, person_ids, data)
    values (p_type, now(), array_remove(p_person_ids, null), jsonb_strip_nulls(p_data));
end
$$;

create or replace function gongji_settlement_event() returns trigger
language plpgsql
as $$
begin
    perform gongji_event('settlement.settled', array[new.patient_id, new.authorizer_id], jsonb_build_object(
        'settlement_id', new.settlement_id, 'institution_id', new.institution_id, 'terminal_id', new.terminal_id,
        'request_id', new.request_id, 'patient_id', new.patient_id, 'authorizer_id', new.authorizer_id,
        'grant_id', new.grant_id::text, 'amount_fen', new.amount_fen, 'acct_pay_fen', new.acct_pay_fen,
        'acct_mulaid_pay_fen', new.acct_mulaid_pay_fen, 'wallet_pay_fen', new.wallet_pay_fen,
        'psn_cash_pay_fen', new.psn_cash_pay_fen, 'care_scope', new.care_scope, 'med_type', new.med_type,
        'created_at', new.created_at));
    return null;
end
$$;

-- A Cancel's refund (settlement.refunded), a Reverse (settlement.reversed: a refund of kind REVERSAL), and
-- a Cancel reversed (refund.reversed: the refund's reversed_at set).
create or replace function gongji_refund_event() returns trigger
language plpgsql
as $$
declare
    s settlement;
begin
    select * into s from settlement x where x.settlement_id = new.settlement_id;
    perform gongji_event(
        case when tg_op = 'UPDATE' then 'refund.reversed'
             when new.kind = 'REVERSAL' then 'settlement.reversed'
             else 'settlement.refunded' end,
        array[s.patient_id, s.authorizer_id], jsonb_build_object(
        'refund_id', new.refund_id, 'settlement_id', new.settlement_id, 'institution_id', new.institution_id,
        'request_id', new.request_id, 'kind', new.kind, 'patient_id', s.patient_id,
        'authorizer_id', s.authorizer_id, 'amount_fen', new.amount_fen, 'acct_pay_fen', new.acct_pay_fen,
        'acct_mulaid_pay_fen', new.acct_mulaid_pay_fen, 'wallet_pay_fen', new.wallet_pay_fen,
        'psn_cash_pay_fen', new.psn_cash_pay_fen, 'created_at', new.created_at, 'reversed_at', new.reversed_at));
    return null;
end
$$;

create or replace function gongji_credit_event() returns trigger
language plpgsql
as $$
begin
    perform gongji_event('account.credited', array[new.person_id], jsonb_build_object(
        'credit_id', new.credit_id, 'request_id', new.request_id, 'person_id', new.person_id,
        'amount_fen', new.amount_fen, 'created_at', new.created_at));
    return null;
end
$$;

create or replace function gongji_grant_event() returns trigger
language plpgsql
as $$
begin
    perform gongji_event(
        case when tg_op = 'INSERT' then 'grant.given'
             when new.status <> 'LIVE' and old.status = 'LIVE' then 'grant.ended'
             else 'grant.cap_set' end,
        array[new.authorizer_id, new.beneficiary_id], jsonb_build_object(
        'grant_id', new.grant_id::text, 'authorizer_id', new.authorizer_id, 'beneficiary_id', new.beneficiary_id,
        'relationship', new.relationship, 'status', new.status, 'end_reason', new.end_reason,
        'yearly_cap_fen', new.yearly_cap_fen, 'created_at', new.created_at, 'ended_at', new.ended_at));
    return null;
end
$$;

create or replace function gongji_binding_event() returns trigger
language plpgsql
as $$
begin
    perform gongji_event(
        case when tg_op = 'INSERT' then 'binding.bound' else 'binding.ended' end,
        array[new.holder_id, new.member_id], jsonb_build_object(
        'binding_id', new.binding_id::text, 'holder_id', new.holder_id, 'member_id', new.member_id,
        'relationship', new.relationship, 'created_at', new.created_at, 'ended_at', new.ended_at));
    return null;
end
$$;

create or replace function gongji_premium_event() returns trigger
language plpgsql
as $$
begin
    perform gongji_event(
        case when tg_op = 'INSERT' then 'premium.paid' else 'premium.refunded' end,
        array[new.payer_id, new.beneficiary_id], jsonb_build_object(
        'payment_id', new.payment_id, 'request_id', new.request_id, 'payer_id', new.payer_id,
        'beneficiary_id', new.beneficiary_id, 'grant_id', new.grant_id::text, 'year', new.year,
        'region_code', new.region_code, 'amount_fen', new.amount_fen, 'created_at', new.created_at,
        'refunded_at', new.refunded_at, 'refund_reason', new.refund_reason));
    return null;
end
$$;

create or replace function gongji_transfer_event() returns trigger
language plpgsql
as $$
begin
    perform gongji_event('transfer.' || case when tg_op = 'INSERT' then 'sent' else lower(new.state) end,
        array[new.sender_id, new.recipient_id], jsonb_build_object(
        'transfer_id', new.transfer_id, 'request_id', new.request_id, 'sender_id', new.sender_id,
        'recipient_id', new.recipient_id, 'relationship', new.relationship, 'amount_fen', new.amount_fen,
        'state', new.state, 'sent_at', new.sent_at, 'due_at', new.due_at, 'resolved_at', new.resolved_at));
    return null;
end
$$;

create or replace function gongji_hold_event() returns trigger
language plpgsql
as $$
begin
    perform gongji_event('hold.' || case when tg_op = 'INSERT' then 'placed' else lower(new.state) end,
        array[new.patient_id, new.authorizer_id], jsonb_build_object(
        'hold_id', new.hold_id, 'institution_id', new.institution_id, 'terminal_id', new.terminal_id,
        'request_id', new.request_id, 'patient_id', new.patient_id, 'authorizer_id', new.authorizer_id,
        'amount_fen', new.amount_fen, 'acct_pay_fen', new.acct_pay_fen,
        'acct_mulaid_pay_fen', new.acct_mulaid_pay_fen, 'wallet_pay_fen', new.wallet_pay_fen,
        'psn_cash_pay_fen', new.psn_cash_pay_fen, 'state', new.state, 'settlement_id', new.settlement_id,
        'created_at', new.created_at, 'expires_at', new.expires_at, 'resolved_at', new.resolved_at));
    return null;
end
$$;

-- The fraud signal (欺诈骗保): an e-voucher presented for another patient than the one it names. The
-- settlement is refused; gongji_settle records the refusal (voucher_mismatch, once per request: a retry
-- is the same signal) and the trigger below tells it, at the commit as every other event.
create or replace function gongji_note_mismatch(
    p_institution_id text, p_request_id text, p_terminal_id text, p_patient_id text, p_voucher_id uuid)
returns void
language sql
as $$
    insert into voucher_mismatch (institution_id, request_id, terminal_id, patient_id, voucher_id)
    values (p_institution_id, p_request_id, p_terminal_id, p_patient_id, p_voucher_id)
    on conflict do nothing
$$;

create or replace function gongji_real_name_mismatch_event() returns trigger
language plpgsql
as $$
begin
    perform gongji_event('voucher.real_name_mismatch', array[new.patient_id], jsonb_build_object(
        'institution_id', new.institution_id, 'terminal_id', new.terminal_id, 'request_id', new.request_id,
        'patient_id', new.patient_id, 'voucher_id', new.voucher_id, 'created_at', new.created_at));
    return null;
end
$$;

-- The triggers, each created once (a trigger of a table is not replaced: dropping it would lock the
-- table against every settlement while an upgrade runs). A change of one is a numbered migration that
-- drops it; this file then creates it again.
do $$
declare
    t record;
begin
    for t in select * from (values
        ('settlement', 'settlement_event', 'insert', 'gongji_settlement_event', 'true'),
        ('refund', 'refund_event', 'insert', 'gongji_refund_event', 'true'),
        ('refund', 'refund_reversed_event', 'update of reversed_at', 'gongji_refund_event',
         'old.reversed_at is null and new.reversed_at is not null'),
        ('credit', 'credit_event', 'insert', 'gongji_credit_event', 'true'),
        ('mutual_aid_grant', 'grant_event', 'insert', 'gongji_grant_event', 'true'),
        ('mutual_aid_grant', 'grant_changed_event', 'update of status, yearly_cap_fen', 'gongji_grant_event',
         'old.status is distinct from new.status or old.yearly_cap_fen is distinct from new.yearly_cap_fen'),
        ('kinship_binding', 'binding_event', 'insert', 'gongji_binding_event', 'true'),
        ('kinship_binding', 'binding_ended_event', 'update of ended_at', 'gongji_binding_event',
         'old.ended_at is null and new.ended_at is not null'),
        ('premium_payment', 'premium_event', 'insert', 'gongji_premium_event', 'true'),
        ('premium_payment', 'premium_refunded_event', 'update of refunded_at', 'gongji_premium_event',
         'old.refunded_at is null and new.refunded_at is not null'),
        ('wallet_transfer', 'transfer_event', 'insert', 'gongji_transfer_event', 'true'),
        ('wallet_transfer', 'transfer_resolved_event', 'update of state', 'gongji_transfer_event',
         'old.state is distinct from new.state'),
        ('settlement_hold', 'hold_event', 'insert', 'gongji_hold_event', 'true'),
        ('settlement_hold', 'hold_resolved_event', 'update of state', 'gongji_hold_event',
         'old.state is distinct from new.state'),
        ('voucher_mismatch', 'voucher_mismatch_event', 'insert', 'gongji_real_name_mismatch_event', 'true')
    ) as x (tab, name, events, fn, cond) loop
        if not exists (select 1 from pg_trigger g where g.tgname = t.name and g.tgrelid = t.tab::regclass) then
            execute format('create constraint trigger %I after %s on %I deferrable initially deferred '
                           'for each row when (%s) execute function %I()', t.name, t.events, t.tab, t.cond, t.fn);
        end if;
    end loop;
end
$$;

-- Give the committed events without a position theirs, in event_id order, after the last position given;
-- at most p_limit. One sequencer at a time: the head row's lock, skipped by any other, which answers one
-- row (null, -1): skipped, so that a head held for long shows in the metrics. Otherwise answers how many
-- of each type it sequenced (gongji_events_written_total).
--
-- Why positions follow commits: an event is sequenced only once its transaction committed (it is seen),
-- and an event of the same account written before it committed before it (see the top of this file), so
-- it was seen, and sequenced, no later. Events of different accounts may be sequenced in another order
-- than their ids; their order between themselves means nothing.
create or replace function gongji_sequence_events(p_limit integer)
returns table (type text, events bigint)
language plpgsql
as $$
#variable_conflict use_column
declare
    v_head bigint;
    v_count bigint;
begin
    select h.position into v_head from outbox_head h for update skip locked;
    if not found then
        type := null; events := -1;
        return next;
        return;
    end if;
    update outbox_event e set position = v_head + t.n
      from (select u.event_id, row_number() over (order by u.event_id) as n
              from (select x.event_id from outbox_event x where x.position is null order by x.event_id
                     limit p_limit) u) t
     where e.event_id = t.event_id;
    get diagnostics v_count = row_count;
    if v_count = 0 then
        return;
    end if;
    update outbox_head set position = v_head + v_count;
    return query select e.type, count(*) from outbox_event e
                  where e.position > v_head and e.position <= v_head + v_count group by e.type;
end
$$;

-- Retention: delete the oldest sequenced events, a prefix of the stream, up to the last position whose
-- events all occurred before p_before; at most p_limit per call. Answers how many it deleted.
create or replace function gongji_prune_events(p_before timestamptz, p_limit integer) returns bigint
language plpgsql
as $$
declare
    v_head    outbox_head;
    v_through bigint;
    v_count   bigint;
    v_cap     bigint;
begin
    select * into v_head from outbox_head for update;
    -- At most p_limit positions further, and the search bounded as much: a long backlog (retention
    -- shortened, or run for the first time) costs each call one page of the index, not a scan.
    v_cap := least(v_head.position, v_head.pruned_through + p_limit);
    v_through := coalesce((select min(e.position) - 1 from outbox_event e
                            where e.position > v_head.pruned_through and e.position <= v_cap
                              and e.occurred_at >= p_before), v_cap);
    if v_through <= v_head.pruned_through then
        return 0;
    end if;
    delete from outbox_event e where e.position > v_head.pruned_through and e.position <= v_through;
    get diagnostics v_count = row_count;
    update outbox_head set pruned_through = v_through;
    return v_count;
end
$$;
