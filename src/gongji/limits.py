"""Every limit gongji enforces, in one place (TigerBeetle's "put a limit on everything")."""

from __future__ import annotations

# Money. One settlement or credit may not exceed 1,000,000 yuan; balances stay far below int64.
AMOUNT_FEN_MAX = 100_000_000
CREDIT_FEN_MAX = 100_000_000
# A yearly cap on mutual aid (per grant, per beneficiary) or an authorizer's floor: at most 1,000,000 yuan.
MUTUAL_AID_LIMIT_FEN_MAX = 100_000_000

# Strings a client controls.
PERSON_ID_LEN_MIN = 6
PERSON_ID_LEN_MAX = 32
NAME_LEN_MAX = 64
REQUEST_ID_LEN_MAX = 64
MEMO_LEN_MAX = 128
VOUCHER_LEN_MAX = 256
# A social-security card's identification code (卡识别码) as a terminal reads it: ASCII letters and digits.
CARD_SERIAL_LEN_MAX = 32
INSTITUTION_ID_LEN_MAX = 32
TERMINAL_ID_LEN_MAX = 32

# Vouchers: short-lived so that a screenshot does not work later.
VOUCHER_TTL_S_DEFAULT = 60
VOUCHER_TTL_S_MAX = 300

# Kinship binding (亲情账户): "我的家庭成员 (n/5)".
FAMILY_BOUND_MEMBERS_MAX = 5
FACE_VERIFICATION_AGE_OVER = 16

# Upgrades: how long one migration or code file may run (a backfill over a large ledger takes seconds,
# more than the pool's command timeout allows a request).
MIGRATION_STATEMENT_TIMEOUT_S = 600

# Plausibility of a grant to a grandparent or grandchild (issue 14): the grandparent is at least this
# many full years older. Two generations of at least 12 years each: low enough never to refuse a real
# family, high enough to catch a grandparent and a grandchild swapped or typed as siblings.
GRANDPARENT_AGE_GAP_YEARS_MIN = 24
PHONE_LEN_MAX = 20
REASON_LEN_MAX = 128
DOCUMENT_NUMBER_LEN_MAX = 32
FACE_VERIFICATION_REF_LEN_MAX = 64
# ListFamily answers at most this many bindings, grants given and grants held each.
FAMILY_LIST_ENTRIES_MAX = 50
# Region policies an operator may set (31 provinces and their 统筹区 fit well below).
REGION_POLICIES_MAX = 1_000

# Resident premiums paid from a close relative's personal account (国办发〔2024〕38号). A contribution
# year from the first the rule paid for up to next year (collected in the autumn before it); a rate's
# window lies in the year before its year or in the year itself.
PREMIUM_YEAR_MIN = 2024
PREMIUM_YEARS_AHEAD_MAX = 1
# Rates an operator may set, every year together (about 400 统筹区 and 31 provinces a year, for years).
PREMIUM_RATES_MAX = 5_000
# ReportPremiums: days in one request (a quarter), and rows per page.
PREMIUM_REPORT_DAYS_MAX = 92
PREMIUM_REPORT_PAGE_SIZE_DEFAULT = 100
PREMIUM_REPORT_PAGE_SIZE_MAX = 1_000

# Field violations reported for one request (the rest are implied).
FIELD_VIOLATIONS_MAX = 20
# Relationships one region policy may list (there are eight).
POLICY_RELATIONSHIPS_MAX = 8
# A region policy's wallet limits (the region_policy wallet_* checks of migration 0016 say the same):
# sends per sender and day, and the most one transfer may carry.
WALLET_SENDS_PER_DAY_MAX = 100
WALLET_SEND_MAX_FEN_MAX = 100_000_000

# Pages a client may ask for.
LEDGER_PAGE_SIZE_DEFAULT = 20
LEDGER_PAGE_SIZE_MAX = 100
# The expiry work returns due wallet transfers this many per statement (one transaction each), so that
# a long backlog after an outage holds no lock for long.
WALLET_EXPIRY_BATCH = 100
# A Quote may hold its split for 1 to this many seconds (the patient confirms on the terminal or in the
# app); the expiry work gives back what nobody captured.
HOLD_SECONDS_MAX = 300
RECONCILE_PAGE_SIZE_DEFAULT = 100
RECONCILE_PAGE_SIZE_MAX = 1_000
PAGE_TOKEN_LEN_MAX = 256
# Checks against the institution's books (CheckTotals 3201, CheckDetail 3202). Days in one check (a
# month). Totals: lines one request may carry (two insurance types today, room for clearing classes),
# and the bounds of their figures (a count of records; sums in fen, negative when refunds are netted).
RECONCILE_CHECK_DAYS_MAX = 31
RECONCILE_TOTALS_LINES_MAX = 8
RECONCILE_TOTALS_COUNT_MAX = 1_000_000_000
RECONCILE_TOTALS_FEN_MAX = 10**15
# Detail: the institution's rows in one page, and gongji's rows one answer compares (more in the page's
# stretch: the answer says how far it compared). A page of 1,000 rows of 64-character ids is about
# 110 KB, well within GRPC_MESSAGE_BYTES_MAX, and an answer of 2,000 differences about 400 KB.
RECONCILE_DETAIL_ROWS_MAX = 1_000
RECONCILE_DETAIL_GONGJI_ROWS_MAX = 1_000

# Credentials (api/auth.py, api/credential_watch.py). Money calls check their credential in their own
# transaction, so none of these delays them. Other calls trust a per-process cache, whose entries are
# dropped within milliseconds of a revocation by the database's notification (store/sql/credentials.sql), and otherwise:
# - kept at most CREDENTIAL_CACHE_TTL_S while the process listens for those notifications (a bound on
#   the load on the database, and on staleness should the listening connection die unnoticed: the
#   ping below notices that within CREDENTIAL_LISTENER_PING_INTERVAL_S + _TIMEOUT_S, and the cache
#   is cleared then);
# - kept at most CREDENTIAL_CACHE_UNLISTENED_TTL_S while it does not (starting, or reconnecting after
#   a restart or a failover: notifications are being missed).
CREDENTIAL_CACHE_TTL_S = 30
CREDENTIAL_CACHE_UNLISTENED_TTL_S = 1
CREDENTIAL_CACHE_ENTRIES_MAX = 10_000
CREDENTIAL_LISTENER_PING_INTERVAL_S = 5.0
CREDENTIAL_LISTENER_PING_TIMEOUT_S = 2.0
CREDENTIAL_LISTENER_CONNECT_TIMEOUT_S = 5.0
# Reconnecting the listener: from the first to the longest pause, doubling, with jitter.
CREDENTIAL_LISTENER_BACKOFF_MIN_S = 0.25
CREDENTIAL_LISTENER_BACKOFF_MAX_S = 10.0
# credential.last_used_at: uses are remembered in memory (one entry per credential, at most this many;
# beyond it new credentials wait for the next flush) and written in one UPDATE at most this often.
CREDENTIAL_LAST_USED_FLUSH_S = 60.0
CREDENTIAL_LAST_USED_ENTRIES_MAX = 10_000
# How long a server that is stopping waits for its last flush of last_used_at.
CREDENTIAL_LAST_USED_FINAL_FLUSH_TIMEOUT_S = 2.0

# Health: how often the server asks the database whether it answers, and how long it waits. While it
# does not, health reports NOT_SERVING (calls answer UNAVAILABLE), and SERVING again once it does.
HEALTH_CHECK_INTERVAL_S = 1.0
HEALTH_CHECK_TIMEOUT_S = 5.0

# gRPC.
GRPC_MESSAGE_BYTES_MAX = 1 * 1024 * 1024
GRPC_CONCURRENT_RPCS_MAX = 2_000

# The edge: what one connection, one caller or a slow client may hold (gongji.api.admission).
# Streams one connection may have open (HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS): as many as the server
# admits calls by default. gRPC clients multiplex every call of a channel over one connection (the app
# backend's, a load test's), and a stream beyond the limit is refused by gRPC core (REFUSED_STREAM:
# UNAVAILABLE) or queued by the client. What a connection's streams may hold is admission's business.
GRPC_STREAMS_PER_CONNECTION_MAX = 2_000
# Connections one server process accepts (gRPC core closes the rest at once). With the stream limit
# this bounds the calls a process can be made to hold, whatever the callers do.
GRPC_CONNECTIONS_MAX = 2_000
# A connection must finish its TLS and HTTP/2 handshake within this, or it is closed.
GRPC_HANDSHAKE_TIMEOUT_MS = 10_000
# Request headers (metadata) a client may send: gRPC's own default soft limit, named.
GRPC_METADATA_BYTES_MAX = 8 * 1024
# gRPC's own limit on calls in a process, counted from their headers: a backstop behind gongji's
# admission (which answers with an ErrorInfo), reached only by a flood of streams that are being
# refused at their headers; this many times GONGJI_MAX_CONCURRENT_RPCS.
GRPC_STREAMS_BACKSTOP_FACTOR = 4
# Calls gRPC core has received but not yet handed to gongji's event loop (a burst of new streams while
# the loop is busy). Beyond the first, core starts shedding new streams at random (CANCELLED), honest
# ones included; beyond the second, all. gRPC's defaults (1,000 and 3,000) shed honest calls during a
# burst of a few thousand streams that gongji would refuse at their headers in about a second.
GRPC_PENDING_CALLS_SOFT_MAX = 10_000
GRPC_PENDING_CALLS_MAX = 20_000
# After its headers, a call's request message must arrive within this (it normally comes in the same
# packet); a stream that sends nothing is ended with REQUEST_MESSAGE_TIMEOUT.
REQUEST_MESSAGE_WAIT_S = 5.0
# Fair shares of GONGJI_MAX_CONCURRENT_RPCS: the percentage of it that one credential (by its kind) or
# all the terminals of one institution may have in flight. A terminal credential may be one POS or a
# hospital's front-end processor speaking for all its counters, and the app backend speaks for every
# insured person through one credential; so the shares are generous, but none is the whole: a stolen or
# runaway credential leaves at least three quarters to the rest, one institution at least half.
CALLS_IN_FLIGHT_TERMINAL_PERCENT = 25
CALLS_IN_FLIGHT_INSTITUTION_PERCENT = 50
CALLS_IN_FLIGHT_APP_PERCENT = 50
CALLS_IN_FLIGHT_OPERATOR_PERCENT = 10
# A downstream system reading events: its streams are few (EVENT_STREAMS_PER_CREDENTIAL_MAX), long and light.
CALLS_IN_FLIGHT_CONSUMER_PERCENT = 5
# Credential look-ups (cache misses) in flight at once: a flood of unknown tokens queues on these, not
# on the database pool that settlements need.
CREDENTIAL_LOOKUPS_IN_FLIGHT_MAX = 4
CREDENTIAL_LOOKUP_WAIT_S = 1.0
# While a process listens for credential changes it keeps the hash of every live token in memory (at
# most this many; beyond, it looks tokens up as before), and a token not among them is refused without
# asking the database. Tokens it does not know are still looked up at this rate, at most: a credential
# created a moment ago may not have been announced yet.
CREDENTIALS_IN_MEMORY_MAX = 200_000
CREDENTIALS_LOAD_ATTEMPTS = 3
# Credential changes applied one by one (a query for the batch); more at once: reload them all.
CREDENTIAL_CHANGES_BATCH_MAX = 1_000
UNKNOWN_TOKEN_LOOKUPS_PER_S = 20

# Connections from POS terminals behind NAT (see "Operating gongji" in the README for the client side).
# Carrier-grade and shop-router NATs forget an idle TCP mapping after as little as a minute or two, and
# the terminal then waits out a dead connection at its next sale. The server therefore pings idle
# connections every minute (without limit on pings without data), and lets clients ping it every 20 s.
GRPC_KEEPALIVE_TIME_MS = 60_000
GRPC_KEEPALIVE_TIMEOUT_MS = 20_000
GRPC_CLIENT_PING_INTERVAL_MS_MIN = 20_000
# A client pinging more often than that is told to go away (GOAWAY "too_many_pings") after this many.
GRPC_PING_STRIKES_MAX = 2
# Connections are recycled so that clients spread over new instances and pick up rotated certificates;
# the grace outlasts any sensible Settle deadline, so no call in flight is cut off by it.
GRPC_CONNECTION_IDLE_MS_MAX = 15 * 60_000
GRPC_CONNECTION_AGE_MS_MAX = 30 * 60_000
GRPC_CONNECTION_AGE_GRACE_MS = 60_000

# A call that ends without a request message may have been cancelled: gRPC tells the handler within
# this (it is only waited for by such calls).
CANCELLATION_GRACE_S = 0.05
# A call cancelled with less than this left of its deadline is counted as DEADLINE_EXCEEDED: the client's
# deadline passes on its side first, and the server learns of it as a cancellation one network trip
# later, a few milliseconds on loopback, up to about a second for a POS on a poor mobile link.
DEADLINE_SLACK_S = 1.0

# The outbox (docs/events.md). Events sequenced per statement of the sequencer, and how often each server
# runs it (the delay between a commit and its event reaching a following consumer is about this).
EVENT_SEQUENCE_BATCH = 5_000
EVENT_SEQUENCE_INTERVAL_S = 0.2
# Events deleted per statement of retention, which runs every EVENT_PRUNE_INTERVAL_S.
EVENT_PRUNE_BATCH = 10_000
EVENT_PRUNE_INTERVAL_S = 60.0
# How often the consumers' lag is read for the gauges.
EVENT_LAG_INTERVAL_S = 5.0
# A stream reads this many events per query, and a following stream that is caught up asks again after
# this long (a position reached by another server's sequencer is seen within it).
EVENT_PAGE = 500
EVENT_POLL_S = 0.25
# Open event streams per server process, and per credential. A stream holds no database connection
# between its pages.
EVENT_STREAMS_MAX = 64
EVENT_STREAMS_PER_CREDENTIAL_MAX = 4
# Consumer names one credential may have (each is a series of gongji_event_consumer_lag_*), and how long
# a consumer stays in the gauges after it last read (a consumer retired is forgotten after it).
EVENT_CONSUMER_NAMES_MAX = 8
EVENT_CONSUMER_NAME_LEN_MAX = 64
EVENT_CONSUMER_FORGET_AFTER_S = 7 * 86_400
# How often a following stream writes its consumer's position (the lag gauge's freshness).
EVENT_CONSUMER_SAVE_S = 1.0
