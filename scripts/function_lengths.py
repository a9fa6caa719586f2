"""Report every function longer than LIMIT_LINES, in Python (src/) and in the server-side SQL
(src/gongji/store/sql/): one limit for both languages (TigerBeetle's "see a function at once").

Our own few lines because no linter does this for PL/pgSQL: ruff and pylint count Python statements
only, plpgsql_check analyses a function's body but has no length rule, and sqlfluff sees a function's
body as an opaque string. A function is measured from its `def` (or `create or replace function`) to
its last line (or the closing `$$;`), comments and blank lines included, as a reader sees it.

Exit 1 when a function is over the limit, unless it is listed in OVER_THE_LIMIT at no more than its
length there: a function that must stay longer says so there, with its reason, and the list only ever
shrinks. It is empty today.
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LIMIT_LINES = 70
# Longer than the limit, each with its reason; may not grow.
OVER_THE_LIMIT: dict[str, int] = {}

_SQL_FUNCTION = re.compile(r"create or replace function (\w+)")


def python_functions() -> list[tuple[str, int]]:
    found = []
    for path in sorted((ROOT / "src" / "gongji").rglob("*.py")):
        if "v1" in path.relative_to(ROOT / "src" / "gongji").parts:
            continue  # generated stubs
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                assert node.end_lineno is not None
                where = f"{path.relative_to(ROOT / 'src' / 'gongji')}:{node.name}"
                found.append((where, node.end_lineno - node.lineno + 1))
    return found


def sql_functions() -> list[tuple[str, int]]:
    found = []
    for path in sorted((ROOT / "src" / "gongji" / "store" / "sql").glob("*.sql")):
        text = path.read_text(encoding="utf-8")
        for match in _SQL_FUNCTION.finditer(text):
            end = text.index("$$;", match.end())
            lines = text.count("\n", match.start(), end) + 1
            found.append((f"sql/{path.name}:{match[1]}", lines))
    return found


def main() -> int:
    failures = []
    for where, lines in python_functions() + sql_functions():
        allowed = OVER_THE_LIMIT.get(where, LIMIT_LINES)
        if lines > LIMIT_LINES:
            listed = "; listed to be split" if where in OVER_THE_LIMIT else ""
            print(f"{where}: {lines} lines (limit {LIMIT_LINES}{listed})")
        if lines > allowed:
            failures.append(where)
    if failures:
        print(f"over the limit: {', '.join(failures)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
