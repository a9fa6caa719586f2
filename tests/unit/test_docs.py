"""The documentation a clone of the repository carries: every link and path it names resolves inside the
repository, and docs/api.md lists every RPC of the contract and every refusal as errors.py answers it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from gongji import errors
from gongji.v1 import account_pb2, events_pb2, family_pb2, settlement_pb2, wallet_pb2

ROOT = Path(__file__).resolve().parents[2]
DOCS = sorted(
    [ROOT / "README.md", *(ROOT / "docs").glob("*.md"), ROOT / "deploy" / "README.md", ROOT / "bench" / "README.md"]
)
_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
_CODE_BLOCK = re.compile(r"^```.*?^```", re.S | re.M)
# A path of the repository named in backticks: `src/gongji/limits.py`, `deploy/k8s/`, `proto/gongji/v1/`.
# Where a pointer must never lead: outside the repository, to notes a clone does not have.
FORBIDDEN = ("../" + "shared", "DOMAIN" + ".md", "API" + ".md")
_PATH = re.compile(r"`((?:src|docs|deploy|tests|bench|proto|scripts)/[A-Za-z0-9_./-]*)`")


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    text = _CODE_BLOCK.sub("", path.read_text(encoding="utf-8"))
    return {_slug(m[1]) for m in re.finditer(r"^#+ (.+)$", text, re.M)}


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_link_and_path_resolves_inside_the_repository(doc: Path) -> None:
    text = doc.read_text(encoding="utf-8")
    assert not [f for f in FORBIDDEN if f in text]
    broken = []
    for target in _LINK.findall(text):
        if target.startswith(("http://", "https://", "mailto:")):
            continue
        file_part, _, anchor = target.partition("#")
        resolved = (doc.parent / file_part).resolve() if file_part else doc
        missing = not resolved.is_relative_to(ROOT) or not resolved.exists()
        if missing or (anchor and resolved.suffix == ".md" and anchor not in _anchors(resolved)):
            broken.append(target)
    for path in _PATH.findall(_CODE_BLOCK.sub("", text)):
        if not (ROOT / path).exists():
            broken.append(path)
    assert broken == [], f"{doc.name} points at what the repository does not have: {broken}"


def test_no_pointer_in_the_code_leaves_the_repository() -> None:
    for folder in ("src", "tests", "deploy", "bench", "scripts", "proto"):
        for path in (ROOT / folder).rglob("*"):
            kept = path.suffix in {".py", ".md", ".proto", ".yaml", ".yml", ".json", ".sql"}
            if not kept or "migrations" in path.parts:
                continue  # released migrations are history: never edited
            text = path.read_text(encoding="utf-8")
            assert not [f for f in FORBIDDEN if f in text], path


def test_the_contract_page_lists_every_rpc_and_every_refusal() -> None:
    text = (ROOT / "docs" / "api.md").read_text(encoding="utf-8")
    rpcs = [
        m.name
        for module in (settlement_pb2, family_pb2, wallet_pb2, account_pb2, events_pb2)
        for service in module.DESCRIPTOR.services_by_name.values()
        for m in service.methods
    ]
    assert len(rpcs) >= 34
    missing = [name for name in rpcs if f"`{name}`" not in text]
    assert missing == [], f"RPCs docs/api.md does not describe: {missing}"
    rows = {m[2]: (m[1], m[3]) for m in re.finditer(r"^\| `([A-Z_]+)` \| `([A-Z_]+)` \| (.+?) \|$", text, re.M)}
    for cls in errors.BY_REASON.values():
        assert cls.reason in rows, f"docs/api.md has no row for {cls.reason}"
        code, sentence = rows[cls.reason]
        assert code == cls.code, f"{cls.reason}: docs/api.md says {code}, errors.py {cls.code}"
        assert sentence.replace("\\<", "<").replace("\\>", ">") == cls.sentence, cls.reason
