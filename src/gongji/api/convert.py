"""Between proto messages and the domain/store types, in one place."""

from __future__ import annotations

from gongji.api.app import timestamp
from gongji.domain.bill import Insutype, MedType, Parts, Reading
from gongji.domain.eligibility import CareScope, RegionPolicy, wholly_self_paid
from gongji.domain.people import Relationship, mask_id, mask_name
from gongji.domain.vouchers import CertType
from gongji.domain.wallet import WalletPolicy
from gongji.domain.waterfall import Limit
from gongji.store.bindings import BindingRow
from gongji.store.grants import GrantRow
from gongji.store.holds import HoldRow
from gongji.store.ledger import EntryRow
from gongji.store.lifecycle import RefundRow, SettlementView
from gongji.store.policies import PolicyRow
from gongji.store.premiums import PaymentRow, RateRow, ReportRow
from gongji.store.settlements import SettlementRow
from gongji.v1 import account_pb2, family_pb2, settlement_pb2, types_pb2


def names(enum_descriptor: object) -> dict[int, str]:
    """Proto enum number -> value name, for Fields.enum."""
    return {v.number: v.name for v in enum_descriptor.values}  # type: ignore[attr-defined]


RELATIONSHIP_NAMES = names(types_pb2.Relationship.DESCRIPTOR)
DOCUMENT_TYPE_NAMES = names(types_pb2.DocumentType.DESCRIPTOR)
SCHEME_NAMES = names(types_pb2.Scheme.DESCRIPTOR)
STATUS_NAMES = names(types_pb2.PersonStatus.DESCRIPTOR)
SCOPE_NAMES = names(types_pb2.GrantScope.DESCRIPTOR)
CERTIFICATE_TYPE_NAMES = names(types_pb2.CertificateType.DESCRIPTOR)
MED_TYPE_NAMES = names(types_pb2.MedType.DESCRIPTOR)
INSUTYPE_NAMES = names(types_pb2.Insutype.DESCRIPTOR)
WALLET_ORDER_NAMES = names(account_pb2.WalletOrder.DESCRIPTOR)

# Enum prefixes of the proto values, for Fields.enum.
RELATIONSHIP, DOCUMENT_TYPE, SCHEME, STATUS, SCOPE, CERTIFICATE_TYPE = (
    "RELATIONSHIP_",
    "DOCUMENT_TYPE_",
    "SCHEME_",
    "PERSON_STATUS_",
    "GRANT_SCOPE_",
    "CERTIFICATE_TYPE_",
)
MED_TYPE, INSUTYPE, WALLET_ORDER = "MED_TYPE_", "INSUTYPE_", "WALLET_ORDER_"


def relationship(r: Relationship) -> types_pb2.Relationship.ValueType:
    return types_pb2.Relationship.Value(f"RELATIONSHIP_{r}")


def grant(g: GrantRow, *, settlement_order: int = 0) -> family_pb2.MutualAidGrant:
    return family_pb2.MutualAidGrant(
        grant_id=str(g.grant_id),
        authorizer_id=g.authorizer_id,
        beneficiary_id=g.beneficiary_id,
        authorizer_id_masked=mask_id(g.authorizer_id),
        beneficiary_id_masked=mask_id(g.beneficiary_id),
        relationship=relationship(g.relationship),
        status=types_pb2.GrantStatus.Value(f"GRANT_STATUS_{g.status}"),
        created_at=timestamp(g.created_at),
        ended_at=timestamp(g.ended_at),
        end_reason=g.end_reason or "",
        settlement_order=settlement_order,
        yearly_cap_fen=g.yearly_cap_fen,
        cap_left_fen=g.cap_left_fen,
    )


def binding(b: BindingRow) -> family_pb2.Binding:
    return family_pb2.Binding(
        binding_id=str(b.binding_id),
        holder_id=b.holder_id,
        member_id=b.member_id,
        member_id_masked=mask_id(b.member_id),
        member_name_masked=mask_name(b.member_name),
        relationship=relationship(b.relationship),
        created_at=timestamp(b.created_at),
        ended_at=timestamp(b.ended_at),
        active=b.ended_at is None,
    )


def region_policy(key: str, policy: RegionPolicy, row: PolicyRow | None = None) -> account_pb2.RegionPolicy:
    return account_pb2.RegionPolicy(
        region_key=key,
        scope=types_pb2.GrantScope.Value(f"GRANT_SCOPE_{policy.scope}"),
        allowed_relationships=sorted(relationship(r) for r in policy.allowed),
        updated_at=timestamp(row.updated_at) if row else None,
        beneficiary_yearly_cap_fen=policy.beneficiary_yearly_cap_fen,
        authorizer_floor_fen=policy.authorizer_floor_fen,
        # The e-voucher, always accepted, and the cards the region accepts.
        accepted_certificate_types=sorted(certificate_type(c) for c in (CertType.E_VOUCHER, *policy.accepted_cards)),
        mutual_aid_out_of_region=policy.mutual_aid_out_of_region,
        mutual_aid_out_of_province=policy.mutual_aid_out_of_province,
        wholly_self_paid_rules=[
            account_pb2.WhollySelfPaidRule(
                med_type=med_type(m), account_pays=rule.account, mutual_aid_pays=rule.mutual_aid
            )
            for m in MedType
            if (rule := wholly_self_paid(policy, m)) != wholly_self_paid(policy, None)
        ],
        wallet=wallet_policy(policy.wallet),
        wallet_order=account_pb2.WalletOrder.Value(f"WALLET_ORDER_{policy.wallet_order}"),
    )


def wallet_policy(w: WalletPolicy) -> account_pb2.WalletPolicy:
    """Every field as it applies: the published value where the region says none."""
    return account_pb2.WalletPolicy(
        relationships=sorted(relationship(r) for r in w.relationships),
        scope=types_pb2.GrantScope.Value(f"GRANT_SCOPE_{w.scope}"),
        sends_per_day=w.sends_per_day,
        send_max_fen=w.send_max_fen,
        quiet_from=w.quiet_from.strftime("%H:%M"),
        quiet_until=w.quiet_until.strftime("%H:%M"),
        expires_at=w.expires_at.strftime("%H:%M"),
    )


def med_type(m: MedType | None) -> types_pb2.MedType.ValueType:
    return types_pb2.MedType.Value(f"MED_TYPE_{m.name if m else 'UNSPECIFIED'}")


def insutype(i: Insutype | None) -> types_pb2.Insutype.ValueType:
    return types_pb2.Insutype.Value(f"INSUTYPE_{i.name if i else 'UNSPECIFIED'}")


def bill_reading(r: Reading) -> types_pb2.BillReading.ValueType:
    return types_pb2.BillReading.Value(f"BILL_READING_{r}")


def parts(p: Parts) -> types_pb2.BillParts:
    return types_pb2.BillParts(
        in_scope_fen=p.in_scope_fen, over_limit_fen=p.over_limit_fen, wholly_self_paid_fen=p.wholly_self_paid_fen
    )


def certificate_type(c: CertType) -> types_pb2.CertificateType.ValueType:
    return types_pb2.CertificateType.Value(f"CERTIFICATE_TYPE_{c}")


def refund(r: RefundRow) -> types_pb2.Refund:
    return types_pb2.Refund(
        refund_id=str(r.refund_id),
        request_id=r.request_id,
        settlement_id=str(r.settlement_id),
        kind=r.kind,
        amount_fen=r.amount_fen,
        acct_pay_fen=r.acct_pay_fen,
        acct_mulaid_pay_fen=r.acct_mulaid_pay_fen,
        psn_cash_pay_fen=r.psn_cash_pay_fen,
        created_at=timestamp(r.created_at),
        reversed_at=timestamp(r.reversed_at) if r.reversed_at else None,
        wallet_pay_fen=r.wallet_pay_fen,
    )


def settlement(s: SettlementRow, view: SettlementView | None = None) -> types_pb2.Settlement:
    """A settlement as POS terminals see it; with `view`, its refunds and reversal too."""
    return types_pb2.Settlement(
        settlement_id=str(s.settlement_id),
        request_id=s.request_id,
        institution_id=s.institution_id,
        terminal_id=s.terminal_id,
        patient_id=s.patient_id,
        authorizer_id=s.authorizer_id or "",
        amount_fen=s.amount_fen,
        acct_pay_fen=s.acct_pay_fen,
        acct_mulaid_pay_fen=s.acct_mulaid_pay_fen,
        psn_cash_pay_fen=s.psn_cash_pay_fen,
        balc_fen=s.balc_fen,
        refunded_fen=s.refunded_fen,
        created_at=timestamp(s.created_at),
        refunds=[refund(r) for r in view.refunds] if view else [],
        reversed_at=timestamp(view.reversed_at) if view else None,
        mutual_aid_limited_by=mutual_aid_limit(s.mulaid_limited_by),
        certificate_type=certificate_type(s.cert_type),
        insured_region=s.insured_region or "",
        care_region=s.care_region or "",
        care_scope=care_scope(s.care_scope),
        psn_acct_pay_fen=s.acct_pay_fen + s.acct_mulaid_pay_fen,
        bill_reading=bill_reading(s.bill_read),
        bill=parts(s.bill),
        own_parts=parts(s.own_parts),
        mutual_aid_parts=parts(s.mutual_aid_parts),
        cash_parts=parts(s.cash_parts),
        med_type=med_type(s.med_type),
        insutype=insutype(s.insutype),
        wallet_pay_fen=s.wallet_pay_fen,
        wallet_parts=parts(s.wallet_parts),
        wallet_balc_fen=s.wallet_balc_fen,
    )


def hold(h: HoldRow) -> settlement_pb2.Hold:
    return settlement_pb2.Hold(
        hold_id=str(h.hold_id),
        request_id=h.request_id,
        patient_id=h.patient_id,
        amount_fen=h.amount_fen,
        acct_pay_fen=h.acct_pay_fen,
        acct_mulaid_pay_fen=h.acct_mulaid_pay_fen,
        wallet_pay_fen=h.wallet_pay_fen,
        psn_cash_pay_fen=h.psn_cash_pay_fen,
        authorizer_id=h.authorizer_id or "",
        state=settlement_pb2.HoldState.Value(f"HOLD_STATE_{h.state}"),
        created_at=timestamp(h.created_at),
        expires_at=timestamp(h.expires_at),
        resolved_at=timestamp(h.resolved_at) if h.resolved_at else None,
        settlement_id=str(h.settlement_id) if h.settlement_id else "",
    )


def care_scope(scope: CareScope | None) -> types_pb2.CareScope.ValueType:
    return types_pb2.CareScope.Value(f"CARE_SCOPE_{scope or 'UNSPECIFIED'}")


def mutual_aid_limit(limit: Limit | None) -> types_pb2.MutualAidLimit.ValueType:
    return types_pb2.MutualAidLimit.Value(f"MUTUAL_AID_LIMIT_{limit or 'UNSPECIFIED'}")


# What a premium's entries say, with the beneficiary masked: never a whole ID number, a name or a phone.
_PREMIUM_NOTES = {"PREMIUM": "premium for {who}, {year}", "PREMIUM_REFUND": "premium refunded for {who}, {year}"}
_TRANSFER_NOTES = {
    "TRANSFER_OUT": "to the wallet of {who}",
    "TRANSFER_RETURN": "back from {who}: declined, or not accepted in time",
}


def _note(e: EntryRow) -> str:
    if e.kind in _PREMIUM_NOTES and e.counterpart_id is not None:
        said = _PREMIUM_NOTES[e.kind].format(who=mask_id(e.counterpart_id), year=e.premium_year)
        return "; ".join(filter(None, (said, e.note)))
    if e.kind in _TRANSFER_NOTES and e.counterpart_id is not None:
        return _TRANSFER_NOTES[e.kind].format(who=mask_id(e.counterpart_id))
    return e.note or ""


def ledger_entry(e: EntryRow) -> account_pb2.LedgerEntry:
    return account_pb2.LedgerEntry(
        entry_id=str(e.entry_id),
        amount_fen=e.amount_fen,
        balance_after_fen=e.balance_after_fen,
        kind=e.kind,
        settlement_id=str(e.settlement_id or ""),
        credit_id=str(e.credit_id or ""),
        refund_id=str(e.refund_id or ""),
        premium_payment_id=str(e.premium_payment_id or ""),
        transfer_id=str(e.transfer_id or ""),
        counterpart_id_masked=mask_id(e.counterpart_id) if e.counterpart_id else "",
        note=_note(e),
        created_at=timestamp(e.created_at),
    )


def premium_rate(row: RateRow) -> account_pb2.PremiumRate:
    r = row.rate
    return account_pb2.PremiumRate(
        region_key=r.region_key,
        year=r.year,
        amount_fen=r.amount_fen,
        opens_on=r.opens_on.isoformat(),
        closes_on=r.closes_on.isoformat(),
        updated_at=timestamp(row.updated_at),
    )


def premium_payment(p: PaymentRow) -> account_pb2.PremiumPayment:
    return account_pb2.PremiumPayment(
        payment_id=str(p.payment_id),
        request_id=p.request_id,
        payer_id=p.payer_id,
        beneficiary_id=p.beneficiary_id,
        beneficiary_id_masked=mask_id(p.beneficiary_id),
        grant_id=str(p.grant_id),
        year=p.year,
        region_key=p.region_key,
        region_code=p.region_code,
        amount_fen=p.amount_fen,
        created_at=timestamp(p.created_at),
        refunded_at=timestamp(p.refunded_at),
        refund_reason=p.refund_reason or "",
    )


def premium_day(r: ReportRow) -> account_pb2.PremiumDay:
    return account_pb2.PremiumDay(
        date=r.day.isoformat(),
        region_code=r.region_code,
        payment_count=r.payment_count,
        paid_fen=r.paid_fen,
        refund_count=r.refund_count,
        refunded_fen=r.refunded_fen,
    )
