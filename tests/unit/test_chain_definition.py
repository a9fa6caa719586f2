"""The hash chain's link functions are written twice: in migration 0019, which built the chains of the
entries of before, and in store/sql/chain.sql, which every start applies. They must be the same
definition, to the character, or the chains written since would not verify against those of before."""

from __future__ import annotations

import re
from pathlib import Path

STORE = Path(__file__).resolve().parents[2] / "src" / "gongji" / "store"


def _links(text: str) -> dict[str, str]:
    found = re.findall(r"create (?:or replace )?function (gongji_(?:ledger|wallet)_link\(.*?\$\$;)", text, re.S)
    return {f.split("(", 1)[0]: f for f in found}


def test_the_link_functions_are_one_definition() -> None:
    migration = _links((STORE / "migrations" / "0019_ledger_chain.sql").read_text())
    code = _links((STORE / "sql" / "chain.sql").read_text())
    assert set(migration) == {"gongji_ledger_link", "gongji_wallet_link"}
    assert code == migration
