-- The patient's choice of grant travels with the e-voucher (issue 17): gongji_quote, gongji_settle and
-- the grant steps take the grant id a voucher carries. Their new versions come from store/sql (applied
-- after the numbered migrations); the old signatures go here, so that no caller can reach a version
-- that ignores the patient's choice.
drop function if exists gongji_settle(text, text, text, bytea, uuid, boolean, timestamptz, bigint, text, bigint, text,
                                      boolean);
drop function if exists gongji_quote(uuid, boolean, timestamptz, bigint, text, bigint, text, boolean);
drop function if exists gongji_lock_grant(text, text, boolean);
drop function if exists gongji_live_grant(text, text);
