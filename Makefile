# dicom-relay: the two commands a person needs are `make run` and `make test`.
.PHONY: setup run stop test test-fast bench bench-e2e clean

PY := .venv/bin/python

setup:
	@bash scripts/setup.sh

## Set up and start the whole local stack (PostgreSQL, Orthanc, GCS emulator, identifier service, Airflow 3),
## drop a sample study into the inbox and wait until it is delivered. A second `make run` reuses the stack.
## `make run EXECUTOR=celery`: the CeleryExecutor with Redis and two `airflow celery worker` processes.
EXECUTOR ?= local
run: setup
	@$(PY) -m tests.support.stack.local up --executor $(EXECUTOR)

## Stop exactly what `make run` started.
stop:
	@$(PY) -m tests.support.stack.local down

## Set up and run the whole test suite (unit, integration with real services, end-to-end with a real Airflow).
test: setup
	@bash scripts/run_tests.sh

## Without the end-to-end tests (a real Airflow takes minutes to start).
test-fast: setup
	@bash scripts/run_tests.sh -m "not e2e"

## Benchmarks are not tests: they print ratios against peers measured in the same run.
bench: setup
	@$(PY) -m pip install -q -r requirements-bench.txt
	@PYTHONPATH=$(CURDIR) $(PY) scripts/bench_deid.py   # tests.support.samples generates the study
	@$(PY) scripts/bench_pixels.py   # the pixel stage: US / CT frames/s per core, CT primary with vs without it, anchors

## The relay end to end on its own stack (.run/bench-e2e): 500 and 2000 instances, three studies at once, and the
## anchors (storescu, Orthanc REST, transfer_manager) on the same files; prints ratios and which goals hold.
bench-e2e: setup
	@$(PY) -m pip install -q -r requirements-bench.txt
	@PYTHONPATH=$(CURDIR) $(PY) scripts/bench_e2e.py

clean: stop
	rm -rf .run
