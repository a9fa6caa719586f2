-- E-vouchers written nowhere when issued (issue 16): a token carries everything settlement needs
-- (gongji.domain.vouchers), so a settlement is the only writing commit. Single use moves from the
-- voucher row to the settlement: a settlement names its voucher, and no two may name the same one.
--
-- The voucher table stays as the history of the vouchers issued before this upgrade (each row used
-- exactly when a settlement names it, which `gongji audit` still checks); nothing writes it any more.
-- Tokens of the old format are refused from now on: they lived at most five minutes.
set local lock_timeout = '10s';

-- Unique already: a voucher row was used by at most one settlement. The index builds under the
-- table's share lock, which holds settlements off for as long as it takes to build.
create unique index settlement_voucher on settlement (voucher_id);

-- Functions whose arguments change: the voucher's claims come in as arguments instead of a row.
-- store/sql/settle.sql creates them again in the same transaction (gongji.store.migrate).
drop function if exists gongji_settle(text, text, text, bytea, uuid, text, bigint, text, boolean);
drop function if exists gongji_quote(uuid, text, bigint, text, boolean);
drop function if exists gongji_settle_refusal(person, voucher, text);
drop function if exists gongji_voucher_refusal(voucher, text);
