-- Where care happens against where the patient is insured (异地就医, issue 17). An institution may be
-- given its 统筹区 by an operator; otherwise the one in its national code counts (gongji_institution_region).
-- A settlement records the patient's insured region (insuplc_admdvs), the institution's (mdtrt_area_admvs)
-- and whether that was local care, elsewhere in the province, or in another province; a region's policy
-- may keep mutual aid from paying for care away from home (null: it may). Settlements of before have
-- no record of it (null), and every new column is nullable or has no default to write: nothing is rewritten.
set local lock_timeout = '10s';

alter table institution
    add column region_code text constraint institution_region_code check (region_code ~ '^[1-9][0-9]{5}$');

alter table settlement
    add column insured_region text,
    add column care_region text,
    add column care_scope text
        constraint settlement_care_scope check (care_scope in ('LOCAL', 'OUT_OF_REGION', 'OUT_OF_PROVINCE')),
    drop constraint settlement_mulaid_limited_by,
    add constraint settlement_mulaid_limited_by
        check (mulaid_limited_by in ('GRANT_CAP', 'BENEFICIARY_CAP', 'AUTHORIZER_FLOOR', 'CARE_REGION')) not valid;

alter table region_policy
    add column mutual_aid_out_of_region boolean,
    add column mutual_aid_out_of_province boolean;

-- The settlement functions take the institution for where care happens; new versions from store/sql.
drop function if exists gongji_settle(text, text, text, bytea, uuid, boolean, timestamptz, bigint, bigint, text, text,
                                      bigint, text, boolean);
drop function if exists gongji_quote(uuid, boolean, timestamptz, bigint, bigint, text, text, bigint, text, boolean);
drop function if exists gongji_settle_write(uuid, text, text, text, bytea, uuid, text, bigint, text, bigint, bigint,
                                            bigint, bigint, bigint, text, text);
