-- A leaner settlement row (issue 16): the foreign keys that only repeat what gongji_settle already
-- guarantees go, since each costs an index probe and a KEY SHARE lock on the row it names at every
-- settlement (all of an institution's settlements lock its one institution row). Measured with
-- `bench/functions.py --variant` (bench/README.md): gongji_settle_write spends less with them gone.
--
-- What each one guaranteed, and where it is guaranteed now:
-- - settlement.institution_id: taken from the terminal's credential row, inside the settlement's own
--   statement (credential.institution_id keeps its foreign key).
-- - settlement.patient_id: the settlement reads the patient's person row first and refuses
--   PERSON_NOT_FOUND.
-- - settlement.authorizer_id, settlement.grant_id: taken from the grant row the settlement locked, which
--   names its authorizer (mutual_aid_grant keeps its foreign keys to person).
-- - ledger_entry.settlement_id: written by the function that wrote the settlement, in its transaction.
-- People, institutions, grants and settlements are never deleted. `gongji audit` checks every one of
-- these references, and more than the keys did: that a settlement's grant joins its authorizer to its
-- patient.
--
-- Kept: every CHECK (they cost next to nothing and guard the money's arithmetic), every unique index
-- (idempotency and single use), ledger_entry.person_id (the ledger's link to the balance it explains).
set local lock_timeout = '10s';

alter table settlement
    drop constraint if exists settlement_institution_id_fkey,
    drop constraint if exists settlement_patient_id_fkey,
    drop constraint if exists settlement_authorizer_id_fkey,
    drop constraint if exists settlement_grant_id_fkey;
alter table ledger_entry drop constraint if exists ledger_entry_settlement_id_fkey;
