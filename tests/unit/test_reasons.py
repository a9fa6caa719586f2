"""The refusal reasons the SQL code can answer and the error classes of errors.py, tied together.

The store turns an `outcome` of a server-side function into an exception through errors.BY_REASON; a
reason the SQL writes that errors.py does not know would end as a KeyError (INTERNAL) at the first
refusal of that kind. The other way round, a reason no Python code raises and no SQL writes is dead.
"""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path

from gongji import errors
from gongji.store import migrate

# Upper-case literals of the SQL files that are values of the schema, not refusal reasons: 'OK', what
# the CHECK constraints allow (statuses, schemes, ledger kinds, refund kinds), trigger levels, and
# 'REPLAY', which gongji_settle_replay and gongji_premium_replay answer to their callers (never to a
# client), the limits that can hold mutual aid back (an answer's field, not a refusal), what a
# patient presented at the counter, where care happened, and the wallet's states, entries and defaults.
NOT_REASONS = frozenset(
    {
        *("OK", "ACTIVE", "EMPLOYEE", "RESIDENT", "LIVE", "CANCEL", "REFUND", "REVERSAL", "SETTLEMENT"),
        *("MUTUAL_AID", "PREMIUM", "PREMIUM_REFUND", "REFUND_REVERSAL", "STATEMENT", "REPLAY"),
        *("GRANT_CAP", "BENEFICIARY_CAP", "AUTHORIZER_FLOOR", "CARE_REGION"),
        *("LOCAL", "OUT_OF_REGION", "OUT_OF_PROVINCE"),
        *("E_VOUCHER", "ID_CARD", "SOCIAL_SECURITY_CARD"),
        *("AMOUNT", "PARTS"),  # how a settlement read its bill
        # The 医保钱包: a transfer's states, its ledger and wallet entries, and the wallet policy's
        # published defaults (the close relatives, anywhere in the country).
        *("PENDING", "POSTED", "VOIDED", "EXPIRED", "TRANSFER_OUT", "TRANSFER_RETURN", "TRANSFER_IN"),
        *("SPOUSE", "PARENT", "CHILD", "SIBLING", "GRANDPARENT", "GRANDCHILD", "NATIONAL"),
        # The wallet's place in the deduction order, and the sources gongji_split names.
        *("BEFORE_ACCOUNT", "AFTER_ACCOUNT", "AFTER_MUTUAL_AID", "OWN", "WALLET", "MULAID"),
        # A hold at the till: its states and its entries.
        *("CAPTURED", "RELEASED", "HOLD", "HOLD_RELEASE"),
        # What a checkpoint's head that no longer holds found (checkpoints.misfits), and trigger operations.
        *("MISSING", "REWRITTEN", "COUNT", "INSERT", "UPDATE"),
    }
)
_LITERAL = re.compile(r"'([A-Z][A-Z_]*[A-Z])'")
_COMMENT = re.compile(r"--[^\n]*")
SRC = Path(errors.__file__).parent


def _sql_literals() -> set[str]:
    folder = resources.files("gongji.store").joinpath("sql")
    text = "\n".join(folder.joinpath(name).read_text(encoding="utf-8") for name in migrate.CODE_FILES)
    return set(_LITERAL.findall(_COMMENT.sub("", text)))


def test_every_reason_the_sql_answers_has_its_error_class() -> None:
    reasons = _sql_literals() - NOT_REASONS
    assert reasons, "the SQL files answer refusal reasons"
    unknown = sorted(r for r in reasons if r not in errors.BY_REASON)
    assert unknown == [], f"reasons the SQL answers without a class in errors.py: {unknown}"


def test_every_error_class_is_raised_by_python_or_answered_by_sql() -> None:
    python = "\n".join(p.read_text(encoding="utf-8") for p in SRC.rglob("*.py") if p.name != "errors.py")
    sql = _sql_literals()
    dead = sorted(
        cls.reason
        for cls in errors.BY_REASON.values()
        if f"errors.{cls.__name__}" not in python and cls.reason not in sql
    )
    assert dead == [], f"reasons nothing can answer: {dead}"


def test_every_refusal_says_a_sentence_beside_its_reason() -> None:
    """The status message is for people, the ErrorInfo reason for programs: a refusal raised without
    a message of its own still says what happened, never just its reason again."""
    for cls in errors.BY_REASON.values():
        message = cls().message
        assert message != cls.reason and " " in message, f"{cls.reason} has no sentence"
