-- The detail check (3202, CheckDetail) reads one institution's rows of one day in request-id order,
-- a stretch of request ids at a time: these indexes make each stretch one short index range, whatever
-- the institution's history (the unique (institution_id, request_id) index alone would walk every
-- day's ids in the stretch). The day is the calendar day in China, as Reconcile counts it; request ids
-- in byte order (collate "C"), the order the contract tells the institution to sort by.
--
-- Lock impact: CREATE INDEX holds a SHARE lock on its table while it builds, and settlements (or
-- refunds) wait for it. On a small table that is a moment. A deployment whose settlement table is
-- large builds the indexes beforehand, while serving, with the same statements written
-- CREATE INDEX CONCURRENTLY (the README says how, beside the migrations); this migration then finds them by name and
-- builds nothing.
create index if not exists settlement_institution_china_day_request
    on settlement (institution_id, ((created_at at time zone 'Asia/Shanghai')::date), (request_id collate "C"));
create index if not exists refund_institution_kind_china_day_request
    on refund (institution_id, kind, ((created_at at time zone 'Asia/Shanghai')::date), (request_id collate "C"));
create index if not exists refund_reversal_institution_china_day_request
    on refund_reversal (institution_id, ((created_at at time zone 'Asia/Shanghai')::date), (request_id collate "C"));
