-- Kinship binding (亲情账户), identity documents on record, and region grant policy as data.

-- The identity document an insured person was enrolled with. Null document_number: the resident ID
-- card whose number is person_id (the usual case).
alter table person
    add column document_type   text not null default 'RESIDENT_ID_CARD',
    add column document_number text;

-- A holder may show a bound member's e-voucher. Binding moves no money. Rows are never deleted:
-- unbinding sets ended_at, so the history stays.
create table kinship_binding (
    binding_id            bigint generated always as identity primary key,
    holder_id             text not null references person (person_id),
    member_id             text not null references person (person_id),
    relationship          text not null,
    phone                 text not null,          -- the member's phone, given when binding (PII)
    reason                text not null,
    face_verification_ref text,                   -- required for members over 16
    created_at            timestamptz not null default now(),
    ended_at              timestamptz,
    check (holder_id <> member_id)
);
create unique index kinship_binding_live on kinship_binding (holder_id, member_id) where ended_at is null;
create index kinship_binding_holder on kinship_binding (holder_id, created_at);

-- The scope a grant was made under, from the authorizer's region policy at the time: a grant ends
-- when its two people move out of it. Changing a policy later does not narrow live grants.
alter table mutual_aid_grant
    add column scope text not null default 'PROVINCE' check (scope in ('REGION', 'PROVINCE', 'NATIONAL'));

-- Grant policy of a province ('61') or a 统筹区 ('610100'); the most specific applies to the
-- authorizer's region, and where none is set the default is built in (same province; spouse, parent,
-- child). PARENT_IN_LAW and OTHER are refused by the code whatever is listed here.
create table region_policy (
    region_key            text primary key check (region_key ~ '^[1-9][0-9]([0-9]{4})?$'),
    scope                 text not null check (scope in ('REGION', 'PROVINCE', 'NATIONAL')),
    allowed_relationships text[] not null,
    updated_at            timestamptz not null default now()
);

-- A voucher a holder asked for a member is good only while the binding it was issued under lives:
-- after Unbind, the holder can no longer show the member's voucher, including one issued before, and
-- binding again does not bring back vouchers issued before the new binding.
create or replace function gongji_voucher_refusal(v voucher, p_patient_id text) returns text
language sql stable
as $$
    select case
        when v.voucher_id is null then 'VOUCHER_INVALID'
        when v.person_id <> p_patient_id then 'VOUCHER_PATIENT_MISMATCH'
        when v.used_at is not null then 'VOUCHER_ALREADY_USED'
        when v.expires_at <= now() then 'VOUCHER_EXPIRED'
        when v.requester_id <> v.person_id and not exists (
            select 1 from kinship_binding b
             where b.holder_id = v.requester_id and b.member_id = v.person_id and b.ended_at is null
               and b.created_at <= v.issued_at)
            then 'VOUCHER_INVALID'
    end
$$;
