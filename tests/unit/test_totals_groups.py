"""The groups of the totals check (3201), without a server: the SQL that derives a settlement's clearing
class is written from the domain's mapping, the groups an institution may send are those gongji's side
may have, and the institution's CSV is totalled by the column the grouping names."""

from __future__ import annotations

from pathlib import Path

import pytest

from gongji import books, client
from gongji.api import reconcile as api_reconcile
from gongji.domain.bill import CLEARING_CLASS, CLEARING_CLASSES, Insutype, MedType
from gongji.store import reconcile
from gongji.store.reconcile import Grouping
from gongji.v1 import settlement_pb2 as pb


def test_the_clearing_class_sql_is_the_mapping_of_the_domain() -> None:
    expression = reconcile.clearing_class_sql("m")
    assert set(CLEARING_CLASS) == set(MedType), "every med_type has a clearing class"
    for med_type, clearing_class in CLEARING_CLASS.items():
        assert f"when '{med_type.value}' then '{clearing_class}'" in expression
    assert expression.count(" when ") == len(CLEARING_CLASS) and expression.endswith("else '' end)")
    assert reconcile._GROUP_OF[Grouping.CLEARING_CLASS] == reconcile.clearing_class_sql("s.med_type")
    assert {"", *CLEARING_CLASS.values()} == CLEARING_CLASSES


def test_an_institution_names_the_groups_gongji_may_have() -> None:
    assert {
        Grouping.ALL: {""},
        Grouping.INSUTYPE: {i.value for i in Insutype},
        Grouping.CLEARING_CLASS: CLEARING_CLASSES,
    } == api_reconcile._GROUPS
    assert set(books.GROUP_COLUMNS) == set(client.GROUPINGS), "a column for every grouping the CLI offers"


def test_the_books_are_totalled_by_the_column_the_grouping_names(tmp_path: Path) -> None:
    csv = tmp_path / "books.csv"
    csv.write_text(
        "kind,request_id,amount,acct_pay,acct_mulaid_pay,psn_cash_pay,insutype,clearing_class\n"
        "settlement,a,10.00,10.00,0.00,0.00,310,11\n"
        "settlement,b,2.50,0.00,0.00,2.50,390, 41 \n"
        "settlement,c,1.00,1.00,0.00,0.00,310,\n"
        "cancel,r,1.00,1.00,0.00,0.00,310,11\n",
        encoding="utf-8",
    )
    rows = books.read(csv)
    assert [r.clearing_class for r in rows] == ["11", "41", "", "11"]

    def totals(grouping: str, refunds: str) -> dict[str, tuple[int, int, int]]:
        lines = books.totals_lines(rows, grouping=grouping, refunds=refunds)
        return {line.group: (line.settled.count, line.settled.amount_fen, line.refunded.count) for line in lines}

    assert totals("clearing_class", "apart") == {"": (1, 100, 0), "11": (1, 1_000, 1), "41": (1, 250, 0)}
    assert totals("clearing_class", "netted") == {"": (1, 100, 0), "11": (2, 900, 0), "41": (1, 250, 0)}
    assert totals("insutype", "excluded") == {"310": (2, 1_100, 0), "390": (1, 250, 0)}
    assert totals("all", "apart") == {"": (3, 1_350, 1)}
    # A CSV without the column: every row is of clearing class "".
    csv.write_text("kind,request_id,amount,acct_pay,acct_mulaid_pay,psn_cash_pay\nsettlement,a,1.00,1.00,0.00,0.00\n")
    rows = books.read(csv)
    assert [line.group for line in books.totals_lines(rows, grouping="clearing_class", refunds="apart")] == [""]
    assert client.GROUPINGS["clearing_class"] == pb.TOTALS_GROUPING_CLEARING_CLASS


def test_the_wallet_column_is_optional_and_read_like_the_other_amounts(tmp_path: Path) -> None:
    """`wallet_pay` (the patient's 医保钱包) is read as yuan with two decimals when the header has it; a CSV
    without it reads every row's wallet part as 0, as before the wallet."""
    csv = tmp_path / "books.csv"
    csv.write_text(
        "kind,request_id,amount,acct_pay,acct_mulaid_pay,psn_cash_pay,wallet_pay\n"
        "settlement,a,20.00,0.00,0.00,5.00,15.00\n"
        "settlement,b,3.00,3.00,0.00,0.00,0.00\n"
        "cancel,r,8.00,0.00,0.00,5.00,3.00\n"
        "refund_reversal,r,8.00,0.00,0.00,5.00,3.00\n",
        encoding="utf-8",
    )
    rows = books.read(csv)
    assert [(r.request_id, r.fen) for r in rows] == [
        ("a", (2_000, 0, 0, 500, 1_500)), ("b", (300, 300, 0, 0, 0)),
        ("r", (800, 0, 0, 500, 300)), ("r", (800, 0, 0, 500, 300)),
    ]  # fmt: skip

    def wallet(refunds: str) -> tuple[int, int, int]:
        (line,) = books.totals_lines(rows, grouping="all", refunds=refunds)
        return line.settled.wallet_pay_fen, line.refunded.wallet_pay_fen, line.refunds_reversed.wallet_pay_fen

    assert wallet("apart") == (1_500, 300, 300)
    assert wallet("netted") == (1_500, 0, 0)
    assert wallet("excluded") == (1_500, 0, 0)
    (line,) = books.totals_lines(rows, grouping="all", refunds="apart")
    f = line.settled
    assert (f.count, f.amount_fen, f.acct_pay_fen, f.psn_cash_pay_fen) == (2, 2_300, 300, 500)

    csv.write_text("kind,request_id,amount,acct_pay,acct_mulaid_pay,psn_cash_pay\nsettlement,a,1.00,0.00,0.00,1.00\n")
    (row,) = books.read(csv)
    assert row.fen == (100, 0, 0, 100, 0)
    assert books.totals_lines([row], grouping="all", refunds="apart")[0].settled.wallet_pay_fen == 0

    # The column present: every row says its wallet part, in the shape of the other amounts.
    for bad in ("", "1.5", "-1.00"):
        csv.write_text(
            "kind,request_id,amount,acct_pay,acct_mulaid_pay,psn_cash_pay,wallet_pay\n"
            f"settlement,a,1.00,0.00,0.00,1.00,0.00\nsettlement,b,1.00,0.00,0.00,1.00,{bad}\n"
        )
        with pytest.raises(books.BooksError, match=r"books\.csv line 3: "):
            books.read(csv)


def test_a_book_row_is_sent_with_its_wallet_part() -> None:
    row = books.BookRow(pb.DETAIL_KIND_SETTLEMENT, "a", (2_000, 0, 0, 500, 1_500), "")
    assert books._detail_row(row).amounts == pb.DetailAmounts(
        amount_fen=2_000, psn_cash_pay_fen=500, wallet_pay_fen=1_500
    )
