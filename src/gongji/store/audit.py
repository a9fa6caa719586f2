"""Checks that the books explain every balance. Used after every concurrency test, and by operators."""

from __future__ import annotations

import asyncpg
import asyncpg.pool

# Every balance equals its credits minus its debits plus its refunds: the sum of its ledger entries
# (accounts open at zero).
_BALANCE_VS_LEDGER = """
select a.person_id, a.balance_fen, coalesce(sum(l.amount_fen), 0)::bigint as ledger_fen
  from account a left join ledger_entry l on l.person_id = a.person_id
 group by a.person_id, a.balance_fen
having a.balance_fen <> coalesce(sum(l.amount_fen), 0)"""

# Every settlement's own-account and mutual-aid parts appear in the ledger exactly once, to the fen.
_SETTLEMENT_VS_LEDGER = """
select s.settlement_id
  from settlement s left join ledger_entry l on l.settlement_id = s.settlement_id
 group by s.settlement_id, s.acct_pay_fen, s.acct_mulaid_pay_fen
having coalesce(-sum(l.amount_fen) filter (where l.kind = 'SETTLEMENT'), 0) <> s.acct_pay_fen
    or coalesce(-sum(l.amount_fen) filter (where l.kind = 'MUTUAL_AID'), 0) <> s.acct_mulaid_pay_fen
    or count(*) filter (where l.kind = 'SETTLEMENT') > 1
    or count(*) filter (where l.kind = 'MUTUAL_AID') > 1"""

# Every refund is in the ledger as split: its own-account part to the patient, its mutual-aid part to
# the authorizer, one entry for each part that is not zero. A reversed refund is there a second time,
# as REFUND_REVERSAL entries taking each part back; one not reversed has none.
_REFUND_VS_LEDGER = """
select r.refund_id
  from refund r join settlement s on s.settlement_id = r.settlement_id
  left join ledger_entry l on l.refund_id = r.refund_id
 group by r.refund_id, r.acct_pay_fen, r.acct_mulaid_pay_fen, r.reversed_at, s.patient_id, s.authorizer_id
having coalesce(sum(l.amount_fen) filter (where l.person_id = s.patient_id and l.kind <> 'REFUND_REVERSAL'), 0)
       <> r.acct_pay_fen
    or coalesce(sum(l.amount_fen) filter (where l.person_id = s.authorizer_id and l.kind <> 'REFUND_REVERSAL'), 0)
       <> r.acct_mulaid_pay_fen
    or count(l.entry_id) filter (where l.kind <> 'REFUND_REVERSAL')
       <> (r.acct_pay_fen > 0)::int + (r.acct_mulaid_pay_fen > 0)::int
    or coalesce(-sum(l.amount_fen) filter (where l.person_id = s.patient_id and l.kind = 'REFUND_REVERSAL'), 0)
       <> case when r.reversed_at is null then 0 else r.acct_pay_fen end
    or coalesce(-sum(l.amount_fen) filter (where l.person_id = s.authorizer_id and l.kind = 'REFUND_REVERSAL'), 0)
       <> case when r.reversed_at is null then 0 else r.acct_mulaid_pay_fen end
    or count(l.entry_id) filter (where l.kind = 'REFUND_REVERSAL')
       <> case when r.reversed_at is null then 0
               else (r.acct_pay_fen > 0)::int + (r.acct_mulaid_pay_fen > 0)::int end
    or bool_or(l.entry_id is not null and l.settlement_id is distinct from r.settlement_id)"""

# A refund is reversed exactly when a reversal of its Cancel (by the Cancel's request id, of its
# institution) names it; only a Cancel's refund can be, and not once its settlement was reversed first.
_REFUND_VS_REVERSAL = """
select r.refund_id
  from refund r
  full join refund_reversal v on v.refund_id = r.refund_id
  left join settlement s on s.settlement_id = r.settlement_id
 where (v.refund_id is not null or r.reversed_at is not null)
   and (r.refund_id is null or v.refund_id is null or r.reversed_at is null or r.kind <> 'CANCEL'
        or v.institution_id <> r.institution_id or v.request_id <> r.request_id
        or s.reversed_at < r.reversed_at)"""

# A settlement's refunded_fen is the sum of its refunds not reversed, and never more than it settled per
# source.
_SETTLEMENT_VS_REFUNDS = """
select s.settlement_id
  from settlement s left join refund r on r.settlement_id = s.settlement_id
 group by s.settlement_id
having s.refunded_fen <> coalesce(sum(r.amount_fen) filter (where r.reversed_at is null), 0)
    or coalesce(sum(r.acct_pay_fen) filter (where r.reversed_at is null), 0) > s.acct_pay_fen
    or coalesce(sum(r.acct_mulaid_pay_fen) filter (where r.reversed_at is null), 0) > s.acct_mulaid_pay_fen
    or coalesce(sum(r.psn_cash_pay_fen) filter (where r.reversed_at is null), 0) > s.psn_cash_pay_fen
    or coalesce(sum(r.wallet_pay_fen) filter (where r.reversed_at is null), 0) > s.wallet_pay_fen"""

# What a settlement names exists, and its grant joins its authorizer to its patient; a settlement's
# ledger entries name a settlement that exists (0009 left these to gongji_settle and to this check).
_SETTLEMENT_REFERENCES = """
select s.settlement_id
  from settlement s
 where not exists (select 1 from institution i where i.institution_id = s.institution_id)
    or not exists (select 1 from person p where p.person_id = s.patient_id)
    or (s.grant_id is not null and not exists (
           select 1 from mutual_aid_grant g
            where g.grant_id = s.grant_id and g.authorizer_id = s.authorizer_id and g.beneficiary_id = s.patient_id))
union all
select l.settlement_id
  from ledger_entry l
 where l.settlement_id is not null
   and not exists (select 1 from settlement s where s.settlement_id = l.settlement_id)"""

# A voucher is used exactly when a settlement names it.
_VOUCHER_VS_SETTLEMENT = """
select v.voucher_id
  from voucher v left join settlement s on s.voucher_id = v.voucher_id
 where (v.used_at is null) <> (s.settlement_id is null) or v.settlement_id is distinct from s.settlement_id"""


# What mutual aid paid net of refunds (a reversed refund gave nothing back), and what pending holds at
# the till hold of it, per grant and per beneficiary and calendar year (China's time zone), is what the
# caps count (grant_usage, beneficiary_usage), to the fen. A pending hold counts in its cap_year: the
# year (by the database's clock, as a settlement's) whose room it was held against, not the year of its
# created_at, which is the service's clock.
_NET_MUTUAL_AID = """
select s.grant_id, s.patient_id, gongji_china_year(s.created_at) as year,
       s.acct_mulaid_pay_fen - coalesce((select sum(r.acct_mulaid_pay_fen) from refund r
                                          where r.settlement_id = s.settlement_id and r.reversed_at is null), 0)
           as fen
  from settlement s where s.grant_id is not null
union all
select h.grant_id, h.patient_id, h.cap_year, h.acct_mulaid_pay_fen
  from settlement_hold h where h.state = 'PENDING' and h.grant_id is not null"""
_GRANT_USAGE_VS_SETTLEMENTS = f"""
with net as ({_NET_MUTUAL_AID}), books as (select grant_id, year, sum(fen)::bigint as fen from net group by 1, 2)
select coalesce(u.grant_id, b.grant_id) as grant_id, coalesce(u.year, b.year) as year,
       coalesce(u.used_fen, 0) as used_fen, coalesce(b.fen, 0) as books_fen
  from grant_usage u full join books b on b.grant_id = u.grant_id and b.year = u.year
 where coalesce(u.used_fen, 0) <> coalesce(b.fen, 0)"""
_BENEFICIARY_USAGE_VS_SETTLEMENTS = f"""
with net as ({_NET_MUTUAL_AID}), books as (select patient_id, year, sum(fen)::bigint as fen from net group by 1, 2)
select coalesce(u.beneficiary_id, b.patient_id) as beneficiary_id, coalesce(u.year, b.year) as year,
       coalesce(u.used_fen, 0) as used_fen, coalesce(b.fen, 0) as books_fen
  from beneficiary_usage u full join books b on b.patient_id = u.beneficiary_id and b.year = u.year
 where coalesce(u.used_fen, 0) <> coalesce(b.fen, 0)"""
# Every premium payment is in its payer's ledger exactly once, as a debit of its amount; a refunded one
# also exactly once as a PREMIUM_REFUND credit of the same amount, an unrefunded one not at all; both
# entries name the beneficiary.
_PREMIUM_VS_LEDGER = """
select p.payment_id
  from premium_payment p left join ledger_entry l on l.premium_payment_id = p.payment_id
 group by p.payment_id, p.payer_id, p.beneficiary_id, p.amount_fen, p.refunded_at
having count(*) filter (where l.kind = 'PREMIUM') <> 1
    or coalesce(sum(l.amount_fen) filter (where l.kind = 'PREMIUM'), 0) <> -p.amount_fen
    or count(*) filter (where l.kind = 'PREMIUM_REFUND') <> (p.refunded_at is not null)::int
    or coalesce(sum(l.amount_fen) filter (where l.kind = 'PREMIUM_REFUND'), 0)
       <> case when p.refunded_at is null then 0 else p.amount_fen end
    or bool_or(l.person_id <> p.payer_id or l.counterpart_id is distinct from p.beneficiary_id)"""

# Every wallet balance is the sum of its entries (wallets open at zero).
_WALLET_VS_ENTRIES = """
select w.person_id, w.balance_fen, coalesce(sum(e.amount_fen), 0)::bigint as entries_fen
  from wallet w left join wallet_entry e on e.person_id = w.person_id
 group by w.person_id, w.balance_fen
having w.balance_fen <> coalesce(sum(e.amount_fen), 0)"""
# Every transfer left its sender's account exactly once (TRANSFER_OUT of its amount); one declined or
# expired came back exactly once (TRANSFER_RETURN); one accepted is in the recipient's wallet exactly
# once (TRANSFER_IN); a pending one is in neither: the money in flight is the sum of the pending ones.
# Each entry is the transfer's own person's. An accept or decline ended it before its due time, a return
# at it or after; its China day (which the daily count reads) is its sending's. The entries are
# aggregated once per transfer, not looked up per transfer (ledger_entry has no index on transfer_id).
_TRANSFER_VS_BOOKS = """
with a as (
    select l.transfer_id,
           count(*) filter (where l.kind = 'TRANSFER_OUT') as outs,
           coalesce(sum(l.amount_fen) filter (where l.kind = 'TRANSFER_OUT'), 0) as out_fen,
           count(*) filter (where l.kind = 'TRANSFER_RETURN') as returns,
           coalesce(sum(l.amount_fen) filter (where l.kind = 'TRANSFER_RETURN'), 0) as return_fen,
           min(l.person_id) as first_person, max(l.person_id) as last_person
      from ledger_entry l where l.transfer_id is not null group by l.transfer_id),
w as (
    select e.transfer_id, count(*) as ins, sum(e.amount_fen) as in_fen,
           min(e.person_id) as first_person, max(e.person_id) as last_person
      from wallet_entry e where e.transfer_id is not null group by e.transfer_id)
select t.transfer_id
  from wallet_transfer t left join a on a.transfer_id = t.transfer_id left join w on w.transfer_id = t.transfer_id
 where coalesce(a.outs, 0) <> 1 or coalesce(a.out_fen, 0) <> -t.amount_fen
    or a.first_person <> t.sender_id or a.last_person <> t.sender_id
    or w.first_person <> t.recipient_id or w.last_person <> t.recipient_id
    or coalesce(a.returns, 0) <> (t.state in ('VOIDED', 'EXPIRED'))::int
    or coalesce(a.return_fen, 0) <> case when t.state in ('VOIDED', 'EXPIRED') then t.amount_fen else 0 end
    or coalesce(w.ins, 0) <> (t.state = 'POSTED')::int
    or coalesce(w.in_fen, 0) <> case when t.state = 'POSTED' then t.amount_fen else 0 end
    or (t.state in ('POSTED', 'VOIDED') and t.resolved_at >= t.due_at)
    or (t.state = 'EXPIRED' and t.resolved_at < t.due_at)
    or t.china_day <> (t.sent_at at time zone 'Asia/Shanghai')::date"""

# What a settlement paid from the wallet is in the patient's wallet exactly once (SETTLEMENT), and the
# balance after it recorded is that entry's; what each refund gave back to the wallet is there once
# (REFUND or REVERSAL), and once more taken back (REFUND_REVERSAL) when the refund was reversed. Every
# entry of a settlement is the patient's.
_SETTLEMENT_VS_WALLET = """
with e as (
    select e.settlement_id, e.refund_id, e.kind, e.person_id, e.amount_fen, e.balance_after_fen
      from wallet_entry e where e.settlement_id is not null),
paid as (
    select s.settlement_id, s.wallet_pay_fen, s.wallet_balc_fen, s.patient_id,
           count(e.kind) filter (where e.kind = 'SETTLEMENT') as entries,
           coalesce(-sum(e.amount_fen) filter (where e.kind = 'SETTLEMENT'), 0) as entry_fen,
           min(e.balance_after_fen) filter (where e.kind = 'SETTLEMENT') as balance_after_fen,
           bool_or(e.person_id <> s.patient_id) as elsewhere
      from settlement s left join e on e.settlement_id = s.settlement_id and e.refund_id is null
     where s.wallet_pay_fen > 0 or e.settlement_id is not null
     group by s.settlement_id),
back as (
    select r.refund_id, r.wallet_pay_fen, r.reversed_at, s.patient_id,
           coalesce(sum(e.amount_fen) filter (where e.kind <> 'REFUND_REVERSAL'), 0) as given_fen,
           count(e.kind) filter (where e.kind <> 'REFUND_REVERSAL') as given,
           coalesce(-sum(e.amount_fen) filter (where e.kind = 'REFUND_REVERSAL'), 0) as taken_fen,
           count(e.kind) filter (where e.kind = 'REFUND_REVERSAL') as taken,
           bool_or(e.person_id <> s.patient_id or e.settlement_id <> r.settlement_id) as elsewhere
      from refund r join settlement s on s.settlement_id = r.settlement_id
      left join e on e.refund_id = r.refund_id
     where r.wallet_pay_fen > 0 or e.refund_id is not null
     group by r.refund_id, s.patient_id)
select 'settlement ' || settlement_id as what from paid
 where entries <> (wallet_pay_fen > 0)::int or entry_fen <> wallet_pay_fen or elsewhere
    or (wallet_pay_fen > 0 and balance_after_fen is distinct from wallet_balc_fen)
union all
select 'refund ' || refund_id from back
 where given <> (wallet_pay_fen > 0)::int or given_fen <> wallet_pay_fen or elsewhere
    or taken <> (wallet_pay_fen > 0 and reversed_at is not null)::int
    or taken_fen <> case when reversed_at is null then 0 else wallet_pay_fen end"""
# Every hold's money left its sources exactly once (HOLD: the patient's account, the authorizer's, named
# by its counterpart, and the wallet) and came back exactly once when it ended (HOLD_RELEASE), never while
# pending; a captured hold's settlement is the patient's and settled exactly the split held.
_HOLD_VS_BOOKS = """
with a as (
    select l.hold_id, count(*) as entries,
           coalesce(-sum(l.amount_fen) filter (where l.kind = 'HOLD' and l.counterpart_id is null), 0) as own_out,
           coalesce(sum(l.amount_fen) filter (where l.kind = 'HOLD_RELEASE' and l.counterpart_id is null), 0)
               as own_back,
           coalesce(-sum(l.amount_fen) filter (where l.kind = 'HOLD' and l.counterpart_id is not null), 0) as aid_out,
           coalesce(sum(l.amount_fen) filter (where l.kind = 'HOLD_RELEASE' and l.counterpart_id is not null), 0)
               as aid_back
      from ledger_entry l where l.hold_id is not null group by l.hold_id),
w as (
    select e.hold_id, count(*) as entries,
           coalesce(-sum(e.amount_fen) filter (where e.kind = 'HOLD'), 0) as out_fen,
           coalesce(sum(e.amount_fen) filter (where e.kind = 'HOLD_RELEASE'), 0) as back_fen
      from wallet_entry e where e.hold_id is not null group by e.hold_id)
select h.hold_id
  from settlement_hold h left join a on a.hold_id = h.hold_id left join w on w.hold_id = h.hold_id
 cross join lateral (select (h.state <> 'PENDING')::int as ended) x
 where coalesce(a.own_out, 0) <> h.acct_pay_fen or coalesce(a.aid_out, 0) <> h.acct_mulaid_pay_fen
    or coalesce(w.out_fen, 0) <> h.wallet_pay_fen
    or coalesce(a.own_back, 0) <> x.ended * h.acct_pay_fen or coalesce(a.aid_back, 0) <> x.ended * h.acct_mulaid_pay_fen
    or coalesce(w.back_fen, 0) <> x.ended * h.wallet_pay_fen
    or coalesce(a.entries, 0) <> ((h.acct_pay_fen > 0)::int + (h.acct_mulaid_pay_fen > 0)::int) * (1 + x.ended)
    or coalesce(w.entries, 0) <> (h.wallet_pay_fen > 0)::int * (1 + x.ended)
    or (h.state = 'CAPTURED' and not exists (
           select 1 from settlement s
            where s.settlement_id = h.settlement_id and s.patient_id = h.patient_id and s.amount_fen = h.amount_fen
              and (s.acct_pay_fen, s.acct_mulaid_pay_fen, s.wallet_pay_fen, s.psn_cash_pay_fen)
                  = (h.acct_pay_fen, h.acct_mulaid_pay_fen, h.wallet_pay_fen, h.psn_cash_pay_fen)))"""

# Each check and how to name what it found. Every query answers the rows that are off.
_CHECKS = (
    (_BALANCE_VS_LEDGER, "account {person_id}: balance {balance_fen} fen, ledger {ledger_fen} fen"),
    (_SETTLEMENT_VS_LEDGER, "settlement {settlement_id}: ledger does not match"),
    (_REFUND_VS_LEDGER, "refund {refund_id}: ledger does not match"),
    (_REFUND_VS_REVERSAL, "refund {refund_id}: reversed does not match its reversal"),
    (_SETTLEMENT_VS_REFUNDS, "settlement {settlement_id}: refunds do not add up"),
    (_SETTLEMENT_REFERENCES, "settlement {settlement_id}: names a missing institution, person or grant"),
    (_VOUCHER_VS_SETTLEMENT, "voucher {voucher_id}: use does not match"),
    (_GRANT_USAGE_VS_SETTLEMENTS, "grant {grant_id}, {year}: caps count {used_fen} fen, settlements {books_fen} fen"),
    (
        _BENEFICIARY_USAGE_VS_SETTLEMENTS,
        "beneficiary {beneficiary_id}, {year}: caps count {used_fen} fen, settlements {books_fen} fen",
    ),
    (_PREMIUM_VS_LEDGER, "premium payment {payment_id}: ledger does not match"),
    (_WALLET_VS_ENTRIES, "wallet {person_id}: balance {balance_fen} fen, entries {entries_fen} fen"),
    (_TRANSFER_VS_BOOKS, "wallet transfer {transfer_id}: the books do not match its state"),
    (_SETTLEMENT_VS_WALLET, "{what}: the wallet's entries do not match what it paid or gave back"),
    (_HOLD_VS_BOOKS, "hold {hold_id}: the books do not match its state"),
)


async def chain_breaks(conn: asyncpg.Connection | asyncpg.pool.PoolConnectionProxy | asyncpg.Pool) -> list[str]:
    """The first entry of each person's ledger (or wallet) whose hash link does not fit the entries before
    it (store/sql/chain.sql): changed, deleted before it, or reordered since it was written. Empty when
    every chain holds. Reads every entry: an operator's check (`gongji audit --chain`)."""
    rows = await conn.fetch("select book, person_id, entry_id from gongji_chain_breaks()")
    return [f"{r['book']} of {r['person_id']}: the hash chain breaks at entry {r['entry_id']}" for r in rows]


async def differences(conn: asyncpg.Connection | asyncpg.pool.PoolConnectionProxy | asyncpg.Pool) -> list[str]:
    """Human-readable differences; empty when the books are right. Names accounts by person_id: this
    is for operators and tests, never for logs."""
    return [template.format(**dict(row)) for query, template in _CHECKS for row in await conn.fetch(query)]
