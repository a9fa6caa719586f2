-- The database ceiling: the same SQL gongji runs for one settlement, issued by pgbench straight to
-- PostgreSQL. Like a real request, each transaction first reads what issuing the patient's e-voucher
-- reads (gongji.store.vouchers: nothing is written, the token is self-contained), then settles in one
-- call to gongji_settle with the claims of a genuine token, guarded by the terminal's credential (and
-- its money lock, 26474 = 0x676A) as gongji.store.settlements and gongji.store.credentials do.
-- bench/run.py fills bench_patient (n -> person_id), passes -D patients=N -D credential_id=N and runs
-- this with -M extended, so that :patient travels as a parameter.
\set n random(1, :patients)
select b.person_id as patient,
       (select p.status from person p where p.person_id = b.person_id) as status,
       coalesce((select k.binding_id from kinship_binding k
                  where k.holder_id = b.person_id and k.member_id = b.person_id and k.ended_at is null), 0) as binding,
       (select h.status from person h where h.person_id = b.person_id) as requester_status
  from bench_patient b where b.n = :n \gset
select g.outcome from credential c
 cross join lateral gongji_settle(c.institution_id, c.terminal_id, gen_random_uuid()::text, '\x00'::bytea,
                                  gen_random_uuid(), true, now() + interval '60 seconds', null::bigint, null::bigint, 'E_VOUCHER',
                                  :patient::text, 1234, null::text, true, null::bigint, null::bigint, null::text,
                                  null::text, null::uuid, null::bytea, null::timestamptz) g
 where c.credential_id = :credential_id and c.revoked_at is null and c.kind = 'TERMINAL'
   and pg_try_advisory_xact_lock_shared(26474, (c.credential_id % 2147483647)::int4);
