-- What the patient presented at the counter (issue 17): the e-voucher, or a card read there (the
-- platform's mdtrt_cert_type 02, the ID card; 03, the social-security card). A settlement records which;
-- one by card names no voucher (a card is not used up), so voucher_id may be null; the unique index
-- settlement_voucher still makes each e-voucher pay once. A region's policy may narrow which cards its
-- insured may present (null: all). Adding a column with a constant default and dropping NOT NULL
-- rewrite nothing.
set local lock_timeout = '10s';

alter table settlement
    add column cert_type text not null default 'E_VOUCHER'
        constraint settlement_cert_type check (cert_type in ('E_VOUCHER', 'ID_CARD', 'SOCIAL_SECURITY_CARD')),
    alter column voucher_id drop not null,
    add constraint settlement_voucher_or_card check ((voucher_id is null) = (cert_type <> 'E_VOUCHER')) not valid;

alter table region_policy
    add column accepted_cert_types text[]
        constraint region_policy_accepted_cert_types
        check (accepted_cert_types <@ array['E_VOUCHER', 'ID_CARD', 'SOCIAL_SECURITY_CARD']);

-- The settlement functions take what was presented; their new versions come from store/sql.
drop function if exists gongji_settle(text, text, text, bytea, uuid, boolean, timestamptz, bigint, bigint, text, bigint,
                                      text, boolean);
drop function if exists gongji_quote(uuid, boolean, timestamptz, bigint, bigint, text, bigint, text, boolean);
drop function if exists gongji_settle_write(uuid, text, text, text, bytea, uuid, text, bigint, text, bigint, bigint,
                                            bigint, bigint, bigint, text);
drop function if exists gongji_presented_refusal(person, uuid, boolean, timestamptz, bigint, bigint, text);
