# The two commands: `make run` (the product on the embedded default) and `make test`.
# Both honour DATABASE_URL and CELERY_BROKER_URL when they are set.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PORT ?= 8000
DEMO_ROWS ?= 1000000
REQS := requirements/base.txt requirements/dev.txt pyproject.toml
STAMP := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.installed-bench

.PHONY: run test setup install install-bench test-sqlite test-pg-redis test-pg-rabbitmq test-long lint faults faults-sqlite faults-pg-redis faults-partitions faults-pg-rabbitmq faults-restarts bench bench-retention bench-smoke bench-smoke-chains bench-smoke-rest clean

$(STAMP): $(REQS)
	@$(PYTHON) -c 'import sys; sys.exit("Python 3.11 or newer is needed; $(PYTHON) is " + sys.version.split()[0]) if sys.version_info < (3, 11) else None'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements/dev.txt
	touch $(STAMP)

install: $(STAMP)

# The benchmarks' optional peers (DBOS Transact, for bench/peers.py), on top of the dev set.
$(BENCH_STAMP): $(STAMP) requirements/bench.txt
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements/bench.txt
	touch $(BENCH_STAMP)

install-bench: $(BENCH_STAMP)

# Migrate, create the demo user and the demo CSV files; safe to run again.
setup: install
	$(BIN)/python manage.py migrate --noinput
	$(BIN)/python manage.py operations make-demo-files --rows $(DEMO_ROWS)
	$(BIN)/python manage.py demo_user --url http://127.0.0.1:$(PORT)/

# Web (gunicorn), worker and beat, on http://127.0.0.1:$(PORT)/ — Ctrl-C stops all three.
run: setup
	PATH="$(abspath $(BIN)):$$PATH" GUNICORN_BIND=127.0.0.1:$(PORT) $(BIN)/honcho start

# The whole suite on the embedded default beside the real-service tests on PostgreSQL + RabbitMQ
# (test slot 1: a database and queue of its own), then those on PostgreSQL + Redis alone (its
# faults restart PostgreSQL and Redis). Under CI=true a test that would skip fails the run instead.
test: install
	@status=0; \
	$(MAKE) --no-print-directory --keep-going -j2 --output-sync=target test-sqlite test-pg-rabbitmq || status=1; \
	$(MAKE) --no-print-directory test-pg-redis || status=1; \
	exit $$status

test-sqlite: install
	TAP_TEST_BACKEND=sqlite-fs $(BIN)/python -m pytest $(PYTEST_ARGS)

test-pg-redis: install
	TAP_TEST_BACKEND=pg-redis $(BIN)/python -m pytest -m integration $(PYTEST_ARGS)

test-pg-rabbitmq: install
	TAP_TEST_SLOT=1 TAP_TEST_BACKEND=pg-rabbitmq $(BIN)/python -m pytest -m integration $(PYTEST_ARGS)

# Tests that take minutes of wall clock (a schedule firing every minute): CI runs them after `make test`.
test-long: install
	TAP_LONG_TESTS=1 TAP_TEST_BACKEND=pg-redis $(BIN)/python -m pytest -m "integration and minutes" $(PYTEST_ARGS)

# The long randomized fault suite (10 seeds per fault, a long control storm, a 10M-row import) on
# every backend; it rewrites docs/reliability.md. `make test` runs one round of the same suite.
# Four sessions run side by side, each in a test slot of its own (database, Redis database,
# queue, var/ folder): the embedded default, PostgreSQL + Redis, the partitions (PostgreSQL +
# Redis, worker in a network namespace) and PostgreSQL + RabbitMQ. The faults that stop
# PostgreSQL or Redis for everyone (marked restarts_services) run afterwards, alone.
FAULT_ROUNDS ?= 10
STORM_COMMANDS ?= 5000
SCALE_ROWS ?= 10000000
FAULT_ENV = TAP_FAULT_ROUNDS=$(FAULT_ROUNDS) TAP_STORM_COMMANDS=$(STORM_COMMANDS) TAP_SCALE_ROWS=$(SCALE_ROWS)
FAULT_PYTEST = $(BIN)/python -m pytest -p no:cacheprovider
faults: install
	rm -rf var/faults
	-$(MAKE) --no-print-directory -j4 faults-sqlite faults-pg-redis faults-partitions faults-pg-rabbitmq
	-$(MAKE) --no-print-directory faults-restarts
	$(BIN)/python -m tests.faults.report > docs/reliability.md
	@echo "docs/reliability.md written"

faults-sqlite: install
	-$(FAULT_ENV) TAP_TEST_BACKEND=sqlite-fs \
	  $(FAULT_PYTEST) tests/faults --junitxml=var/faults/junit-sqlite-fs.xml

faults-pg-redis: install
	-$(FAULT_ENV) TAP_TEST_SLOT=1 TAP_TEST_BACKEND=pg-redis $(FAULT_PYTEST) -m "integration and not restarts_services" \
	  tests/faults --ignore=tests/faults/test_partitions.py --junitxml=var/faults/junit-pg-redis.xml

faults-partitions: install
	-$(FAULT_ENV) TAP_TEST_SLOT=2 TAP_TEST_BACKEND=pg-redis $(FAULT_PYTEST) -m integration \
	  tests/faults/test_partitions.py --junitxml=var/faults/junit-pg-redis-partitions.xml

faults-pg-rabbitmq: install
	-$(FAULT_ENV) TAP_TEST_SLOT=3 TAP_TEST_BACKEND=pg-rabbitmq $(FAULT_PYTEST) -m "integration and not restarts_services" \
	  tests/faults --junitxml=var/faults/junit-pg-rabbitmq.xml

faults-restarts: install
	-$(FAULT_ENV) TAP_TEST_SLOT=1 TAP_TEST_BACKEND=pg-redis $(FAULT_PYTEST) -m "integration and restarts_services" \
	  tests/faults --junitxml=var/faults/junit-pg-redis-restarts.xml

# Benchmarks (reports, not tests): they need PostgreSQL and Redis, on 127.0.0.1 unless
# DATABASE_URL / CELERY_BROKER_URL name other servers (each benchmark uses its own database and
# Redis db on them: bench/common.py).
bench: install-bench
	$(BIN)/python bench/overhead.py
	$(BIN)/python bench/peers.py
	$(BIN)/python bench/import_csv.py
	$(BIN)/python bench/delete.py
	$(BIN)/python bench/admin.py
	$(BIN)/python bench/retention.py

# Retention over 100k finished operations with 1M stored rows, beside a running operation.
bench-retention: install
	$(BIN)/python bench/retention.py

# The same benchmarks, tiny, so CI notices when one no longer runs (their figures mean nothing,
# so the two halves run side by side, each benchmark on its own database and Redis db, to stay
# well within a minute; each half's output is printed whole when it ends).
bench-smoke: install-bench
	$(MAKE) --no-print-directory -j2 --output-sync=target bench-smoke-chains bench-smoke-rest

bench-smoke-chains: install-bench
	$(BIN)/python bench/overhead.py --steps 20 --rounds 1 --count-steps 10 30
	$(BIN)/python bench/peers.py --steps 20 --rows 20000 --rounds 1 --count-steps 10 30
	$(BIN)/python bench/retention.py --operations 2000 --rows 20000 --steps 100 --baseline 2

bench-smoke-rest: install-bench
	$(BIN)/python bench/import_csv.py --rows 20000 --rounds 1
	$(BIN)/python bench/delete.py --rows 20000
	$(BIN)/python bench/admin.py --operations 2000 --rounds 2

# Style, and the one-way dependencies of the operations app (.importlinter).
lint: install
	$(BIN)/ruff check --select F,E,I --ignore E501 operations accounts tapproject tests bench docs
	$(BIN)/lint-imports

clean:
	rm -rf var/test .pytest_cache build dist *.egg-info
