# One place for the commands the README documents. Every target sets up the virtual environment first,
# with only what it needs: `make run` the server's own dependencies, `make test` the test tools too,
# `make check` and the benchmarks everything (pyproject.toml's extras `test`, `bench`, `dev`).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
HASH   := $(shell sha1sum pyproject.toml | cut -c1-12)
RUN_ENV  := $(VENV)/.installed-run-$(HASH)
TEST_ENV := $(VENV)/.installed-test-$(HASH)
DEV_ENV  := $(VENV)/.installed-dev-$(HASH)

.PHONY: run test test-external test-pgbouncer chaos reliability check lint lengths typecheck proto proto-check demo clean \
	bench bench-smoke pgbench venv

# $(call install,EXTRA,STAMPS): create the environment if needed, install gongji with EXTRA, then mark
# STAMPS done (an environment with `dev` has what `test` and `run` need). Stamps of an older
# pyproject.toml are removed, so an edit of it reinstalls.
define install
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || { \
		echo "make: '$(PYTHON) -m venv' failed; on Debian or Ubuntu: apt-get install python3-venv" >&2; exit 1; }
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.$(1)'
	@find $(VENV) -maxdepth 1 -name '.installed-*' ! -name '*-$(HASH)' -delete
	@touch $(2)
endef

$(RUN_ENV): pyproject.toml
	$(call install,,$(RUN_ENV))
$(TEST_ENV): pyproject.toml
	$(call install,[test],$(TEST_ENV) $(RUN_ENV))
$(DEV_ENV): pyproject.toml
	$(call install,[dev],$(DEV_ENV) $(TEST_ENV) $(RUN_ENV))

## The whole development environment (what `make check` and `make bench` use).
venv: $(DEV_ENV)

## Serve gRPC on 127.0.0.1:50051 and metrics on 127.0.0.1:9464 (embedded PostgreSQL unless GONGJI_DATABASE_URL is set).
run: $(RUN_ENV)
	GONGJI_LOG_FORMAT=$${GONGJI_LOG_FORMAT:-text} $(BIN)/gongji serve --demo

## The whole test suite, against the embedded PostgreSQL unless GONGJI_TEST_DATABASE_URL is set.
test: $(TEST_ENV)
	$(BIN)/pytest $(PYTEST_ARGS)

## The database tests again, against the PostgreSQL server on 127.0.0.1:5432.
test-external: $(TEST_ENV)
	GONGJI_TEST_DATABASE_URL=$${GONGJI_TEST_DATABASE_URL:-postgresql://postgres@127.0.0.1:5432/postgres} \
		$(BIN)/pytest -m db $(PYTEST_ARGS)

## The integration tests again, through PgBouncer in transaction mode (Debian's pgbouncer binary, started
## by the script on a loopback port) in front of the PostgreSQL server on 127.0.0.1:5432.
## test_health_follows_the_database is left out here: behind PgBouncer the pooler, not gongji, holds the
## connections to PostgreSQL, and while PostgreSQL refuses logins PgBouncer queues queries until its own
## query_wait_timeout, so what health shows depends on PgBouncer's settings. It runs directly in make test.
test-pgbouncer: $(TEST_ENV)
	$(BIN)/python scripts/pgbouncer_run.py -- $(BIN)/pytest -m db tests/integration \
		--deselect tests/integration/test_server.py::test_health_follows_the_database $(PYTEST_ARGS)

## The chaos suite alone, with CHAOS_SECONDS of load per test, printing its figures: gongji restarts and
## killed connections, PostgreSQL restarts, PostgreSQL crashes, and failovers (synchronous and
## asynchronous replication; CHAOS_FAILOVERS per run, 2 unless set).
CHAOS_SECONDS ?= 120
chaos: $(TEST_ENV)
	CHAOS_SECONDS=$(CHAOS_SECONDS) $(BIN)/pytest -m db -s -q -p no:cacheprovider \
		--timeout=$$(( $(CHAOS_SECONDS) * 4 + 600 )) tests/chaos $(PYTEST_ARGS)

## Everything docs/reliability.md reports, at full size (about an hour on two cores): hostile input,
## the model-based test and the chaos suite (crashes and failovers included), each printing its figures.
reliability: $(TEST_ENV)
	GONGJI_HOSTILE_EXAMPLES=20000 GONGJI_HOSTILE_TOKENS=50000 GONGJI_HOSTILE_REPLAY_ROUNDS=5 \
	GONGJI_LOCKOUT_LIMIT=2000 GONGJI_LOCKOUT_SALES=200 \
	GONGJI_MODEL_EXAMPLES=400 GONGJI_MODEL_STEPS=50 CHAOS_SECONDS=300 CHAOS_CLIENTS=24 CHAOS_FAILOVERS=4 \
		$(BIN)/pytest -m db -s -q -p no:cacheprovider --timeout=3600 tests/hostile tests/model tests/chaos $(PYTEST_ARGS)

## Settle 35.00 yuan for the demo patient against a running `make run`.
demo: $(RUN_ENV)
	$(BIN)/gongji client settle --patient demo:xiaoli --amount-fen 3500

## The benchmarks: seed, load every scenario, measure the ceilings, check the books (bench/README.md);
## then what the hash chain and the outbox cost per settlement, four configurations in turns
## (bench/functions.py --books, about 3 minutes with BOOKS_ARGS; it needs a PostgreSQL server, not the
## embedded one: GONGJI_BENCH_SERVER_URL, else 127.0.0.1:5432).
BOOKS_ARGS ?= --users 8 --seconds 15 --rounds 2
bench: $(DEV_ENV) pgbench
	$(BIN)/python bench/run.py $(BENCH_ARGS)
	$(BIN)/python bench/functions.py --books $(BOOKS_ARGS)

## The same, small and fast (CI runs it; no target is asserted).
bench-smoke: $(DEV_ENV) pgbench
	$(BIN)/python bench/run.py --smoke

# pgbench measures the database ceiling; it comes with Debian's PostgreSQL client.
pgbench:
	@command -v pgbench >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql-client)

check: lint typecheck proto-check lengths

lint: $(DEV_ENV)
	$(BIN)/ruff check src tests scripts bench
	$(BIN)/ruff format --check src tests scripts bench
	cd proto && ../$(BIN)/buf lint

## Functions over 70 lines, in Python and in the server-side SQL (scripts/function_lengths.py says why ours).
lengths: $(DEV_ENV)
	$(BIN)/python scripts/function_lengths.py

typecheck: $(DEV_ENV)
	$(BIN)/mypy

## Regenerate the stubs in src/gongji/v1 from proto/ (never edit them by hand).
proto: $(DEV_ENV)
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/python scripts/gen_proto.py src

## Fail when the committed stubs differ from what proto/ generates.
proto-check: $(DEV_ENV)
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/python scripts/gen_proto.py --check src

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
