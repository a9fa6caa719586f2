"""The small demo data set `make run` loads on first start: the 小明/小丽 family (README.md) and a few
more, one pharmacy terminal, and demo tokens kept (mode 0600) in <data_dir>/demo-tokens.json."""

from __future__ import annotations

import datetime as dt
import json
import logging
from pathlib import Path
from zoneinfo import ZoneInfo

import asyncpg

from gongji import limits
from gongji.domain.people import Person, PersonStatus, Relationship, Scheme, resident_id_check_char
from gongji.domain.premium import PremiumRate
from gongji.store import bindings, credentials, credits, grants, people, premiums, wallets
from gongji.store.credentials import Kind

log = logging.getLogger(__name__)

INSTITUTION_ID = "H61010300001"
INSTITUTION_NAME = "西安市雁塔区共济大药房 (demo)"
TERMINAL_ID = "POS-01"


def _id(first17: str) -> str:
    return first17 + resident_id_check_char(first17)


XIAOMING = Person(
    _id("61011319880512403"), "王小明", dt.date(1988, 5, 12), "610100", Scheme.EMPLOYEE, PersonStatus.ACTIVE
)
XIAOLI = Person(
    _id("61010219920315402"), "李小丽", dt.date(1992, 3, 15), "610100", Scheme.EMPLOYEE, PersonStatus.ACTIVE
)
XIAOBAO = Person(
    _id("61011320190908001"), "王小宝", dt.date(2019, 9, 8), "610100", Scheme.RESIDENT, PersonStatus.ACTIVE
)
ZHANGWEI = Person(_id("61010419800101123"), "张伟", dt.date(1980, 1, 1), "610100", Scheme.EMPLOYEE, PersonStatus.ACTIVE)
LIUFANG = Person(_id("61010419820202224"), "刘芳", dt.date(1982, 2, 2), "610100", Scheme.RESIDENT, PersonStatus.ACTIVE)
CHENJING = Person(_id("61030219750707302"), "陈静", dt.date(1975, 7, 7), "610300", Scheme.EMPLOYEE, PersonStatus.ACTIVE)
ZHAOQIANG = Person(
    _id("44010619700303561"), "赵强", dt.date(1970, 3, 3), "440100", Scheme.EMPLOYEE, PersonStatus.ACTIVE
)
# 王小明's grandmother, 王德福's mother, resident-insured (居民医保): her premium can be paid from his
# account, and her 医保钱包 is open (WALLETS), so that 王德福 can send her money (README).
XIUYING = Person(
    _id("61011319420815202"), "王秀英", dt.date(1942, 8, 15), "610100", Scheme.RESIDENT, PersonStatus.ACTIVE
)
# 王小明's father, 王小宝's grandfather: a retired employee, whose account can pay 王小宝's premium too
# (one payer per year: whoever pays first).
DEFU = Person(_id("61011319600410301"), "王德福", dt.date(1960, 4, 10), "610100", Scheme.EMPLOYEE, PersonStatus.ACTIVE)

PEOPLE = (XIAOMING, XIAOLI, XIAOBAO, ZHANGWEI, LIUFANG, CHENJING, ZHAOQIANG, XIUYING, DEFU)
# `gongji client ... --patient demo:xiaoli`: so that banners and the README need no ID number.
ALIASES = {
    "demo:xiaoming": XIAOMING,
    "demo:xiaoli": XIAOLI,
    "demo:xiaobao": XIAOBAO,
    "demo:zhangwei": ZHANGWEI,
    "demo:liufang": LIUFANG,
    "demo:chenjing": CHENJING,
    "demo:zhaoqiang": ZHAOQIANG,
    "demo:xiuying": XIUYING,
    "demo:defu": DEFU,
}
BALANCES_FEN = {
    XIAOMING: 80_000,
    XIAOLI: 2_000,
    ZHANGWEI: 30_000,
    CHENJING: 12_345,
    ZHAOQIANG: 50_000,
    DEFU: 150_000,
}
GRANTS = (
    (XIAOMING, XIAOLI, Relationship.SPOUSE),  # 小明 grants his wife 小丽 (both employees)
    (XIAOMING, XIAOBAO, Relationship.CHILD),
    (ZHANGWEI, LIUFANG, Relationship.SPOUSE),  # 刘芳 is resident-insured: 张伟's account pays directly
    (XIAOMING, XIUYING, Relationship.GRANDPARENT),  # a close relative since 国办发〔2024〕38号
    (DEFU, XIAOBAO, Relationship.GRANDCHILD),
)
# The resident premium of the demo 统筹区 (西安, 610100) for next year, 400.00 yuan, with a window open
# all of this year (from January 1 to December 31, China's calendar), so that a premium can be paid on
# any day the demo runs: real windows are a few autumn months (9月–12月), which would make the README's
# example fail most of the year.
PREMIUM_REGION = "610100"
PREMIUM_FEN = 40_000


def premium_rate(today: dt.date) -> PremiumRate:
    return PremiumRate(
        PREMIUM_REGION, today.year + 1, PREMIUM_FEN, dt.date(today.year, 1, 1), dt.date(today.year, 12, 31)
    )


# 王小明 shows his son's e-voucher (a child under 16: no face verification).
BINDINGS = ((XIAOMING, XIAOBAO, Relationship.CHILD),)
# The 医保钱包 open in the demo: 王秀英's, which her son 王德福 sends to (the README's wallet example).
WALLETS = (XIUYING,)


async def _open_wallets(pool: asyncpg.Pool) -> None:
    """Open the demo wallets; opening an open one changes nothing, so a demo database loaded by a
    release before the wallet gets them on its next start too."""
    for person in WALLETS:
        await wallets.open_wallet(pool, person.person_id, dt.datetime.now(dt.UTC))


def _write_tokens(path: Path, tokens: dict[str, str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600)
    path.write_text(json.dumps(tokens, indent=2))


async def seed(pool: asyncpg.Pool, data_dir: Path, *, premium: bool = True) -> dict[str, str]:
    """Load the demo data once; return the demo tokens (from the file when already seeded). `premium`
    False leaves out the premium rate (a database of the migrations before premiums has no table for it)."""
    token_file = data_dir / "demo-tokens.json"
    seeded = await pool.fetchval("select 1 from institution where institution_id = $1", INSTITUTION_ID)
    if seeded and token_file.exists():
        await _open_wallets(pool)
        tokens: dict[str, str] = json.loads(token_file.read_text())
        return tokens
    for person in PEOPLE:
        await people.enroll(pool, person)
    # The demo grants and bindings are allowed by construction: written without a decision.
    for authorizer, beneficiary, relationship in GRANTS:
        async with grants.pair_for_grant(pool, authorizer.person_id, beneficiary.person_id) as pair:
            await pair.insert(relationship)
    for holder, member, relationship in BINDINGS:
        async with bindings.pair_for_bind(pool, holder.person_id, member.person_id) as bind:
            await bind.insert(
                relationship=relationship,
                phone="13800000000",
                reason="demo: 代孩子出示医保码",
                face_verification_ref="",
            )
    for person, amount_fen in BALANCES_FEN.items():
        await credits.credit(
            pool,
            credential_id=None,  # the seed itself, not a caller
            request_id=f"demo-credit-{person.person_id}",
            digest=b"demo",
            person_id=person.person_id,
            amount_fen=amount_fen,
            memo="demo 个人账户划入",
        )
    await _open_wallets(pool)
    if premium:
        today = dt.datetime.now(ZoneInfo("Asia/Shanghai")).date()
        await premiums.set_rate(pool, premium_rate(today), limits.PREMIUM_RATES_MAX)
    tokens = {
        "terminal": await credentials.create(
            pool,
            Kind.TERMINAL,
            "demo terminal",
            institution_id=INSTITUTION_ID,
            institution_name=INSTITUTION_NAME,
            terminal_id=TERMINAL_ID,
        ),
        "app": await credentials.create(pool, Kind.APP, "demo app backend"),
        "operator": await credentials.create(pool, Kind.OPERATOR, "demo operator"),
        "consumer": await credentials.create(pool, Kind.CONSUMER, "demo consumer"),
    }
    _write_tokens(token_file, tokens)
    log.info("demo data loaded; tokens in %s", token_file)
    return tokens
