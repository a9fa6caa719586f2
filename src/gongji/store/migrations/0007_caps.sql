-- Caps and a floor on mutual aid (issue 14): a yearly cap per grant that its authorizer sets, a yearly
-- cap per beneficiary across all grants and a floor under the authorizer's balance, both region policy.
-- Years are calendar years in China's time zone.
--
-- An upgrade under load fails here and is tried again rather than queue every settlement behind an
-- ALTER waiting for its lock.
set local lock_timeout = '10s';

-- NOT VALID: the rows already there are null and need no scan under the table's lock; new rows are
-- checked all the same.
alter table mutual_aid_grant add column yearly_cap_fen bigint;
alter table mutual_aid_grant
    add constraint mutual_aid_grant_yearly_cap_fen check (yearly_cap_fen >= 0) not valid;

alter table region_policy
    add column beneficiary_yearly_cap_fen bigint check (beneficiary_yearly_cap_fen >= 0),
    add column authorizer_floor_fen bigint check (authorizer_floor_fen >= 0);

-- Which limit made mutual aid pay less than the bill needed, when one did (the answer says so).
alter table settlement add column mulaid_limited_by text;
alter table settlement
    add constraint settlement_mulaid_limited_by
    check (mulaid_limited_by in ('GRANT_CAP', 'BENEFICIARY_CAP', 'AUTHORIZER_FLOOR')) not valid;

-- What mutual aid paid, net of refunds, per grant and per beneficiary and year: the caps are checked
-- against these under the settlement's locks, and `gongji audit` proves them against the settlements.
create table grant_usage (
    grant_id bigint not null references mutual_aid_grant (grant_id),
    year     integer not null check (year between 2000 and 2999),
    used_fen bigint not null default 0 check (used_fen >= 0),
    primary key (grant_id, year)
);
create table beneficiary_usage (
    beneficiary_id text not null references person (person_id),
    year           integer not null check (year between 2000 and 2999),
    used_fen       bigint not null default 0 check (used_fen >= 0),
    primary key (beneficiary_id, year)
);

-- The books so far: every settlement's mutual-aid part less what was refunded of it, in the year the
-- settlement was made.
with net as (
    select s.grant_id, s.patient_id, extract(year from s.created_at at time zone 'Asia/Shanghai')::integer as year,
           s.acct_mulaid_pay_fen - coalesce((select sum(r.acct_mulaid_pay_fen) from refund r
                                              where r.settlement_id = s.settlement_id), 0) as fen
      from settlement s
     where s.grant_id is not null
), by_grant as (
    insert into grant_usage (grant_id, year, used_fen)
    select grant_id, year, sum(fen) from net group by grant_id, year
)
insert into beneficiary_usage (beneficiary_id, year, used_fen)
select patient_id, year, sum(fen) from net group by patient_id, year;

-- Functions whose arguments or answers change with the caps; store/sql/settle.sql creates them again in
-- the same transaction (gongji.store.migrate).
drop function if exists gongji_settle(text, text, text, bytea, uuid, text, bigint, text, boolean);
drop function if exists gongji_quote(uuid, text, bigint, text, boolean);
drop function if exists gongji_settle_write(
    uuid, text, text, text, bytea, uuid, text, bigint, text, bigint, bigint, bigint, bigint, bigint);
