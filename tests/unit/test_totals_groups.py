"""The groups of the totals check (3201), without a server: the SQL that derives a settlement's clearing
class is written from the domain's mapping, the groups an institution may send are those gongji's side
may have, and the institution's CSV is totalled by the column the grouping names."""

from __future__ import annotations

from pathlib import Path

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
