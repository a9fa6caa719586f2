-- The database ceiling: the same settlement SQL gongji runs, issued by pgbench straight to PostgreSQL.
-- Like a real request, each transaction first records an e-voucher, then settles with it in one call to
-- gongji_settle, guarded by the terminal's credential (and its money lock, 26474 = 0x676A) as
-- gongji.store.settlements and gongji.store.credentials do. bench/run.py
-- fills bench_patient (n -> person_id), passes -D patients=N -D credential_id=N and runs this with
-- -M extended, so that :patient and :voucher_id travel as parameters.
\set n random(1, :patients)
insert into voucher (voucher_id, person_id, requester_id, expires_at)
select gen_random_uuid(), person_id, person_id, now() + interval '60 seconds' from bench_patient where n = :n
returning voucher_id, person_id as patient \gset
select g.outcome from credential c
 cross join lateral gongji_settle(c.institution_id, c.terminal_id, gen_random_uuid()::text, '\x00'::bytea,
                                  :voucher_id::uuid, :patient::text, 1234, null, true) g
 where c.credential_id = :credential_id and c.revoked_at is null and c.kind = 'TERMINAL'
   and pg_try_advisory_xact_lock_shared(26474, (c.credential_id % 2147483647)::int4);
