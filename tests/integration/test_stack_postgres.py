"""The local stack's PostgreSQL: what its settings guarantee to the services that share it."""

import subprocess
import sys
import time

import psycopg
import pytest

pytestmark = pytest.mark.integration


def test_locks_of_a_session_whose_client_was_killed_while_it_waited_are_released(postgres, empty_db_url):
    """The stack's PostgreSQL cancels a statement whose client has gone (client_connection_check_interval), so a
    SIGKILLed scheduler that was waiting for a lock does not leave the rows it had locked locked (without the check
    they stayed locked as long as the wait: 15 s here, minutes in the healing test)."""
    with psycopg.connect(empty_db_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE run (id int PRIMARY KEY)")
        conn.execute("INSERT INTO run VALUES (1), (2)")
    holder = psycopg.connect(empty_db_url)
    holder.execute("SELECT id FROM run WHERE id = 2 FOR UPDATE")
    code = ("import psycopg, sys; c = psycopg.connect(sys.argv[1]);"
            "c.execute('SELECT id FROM run WHERE id = 1 FOR UPDATE'); print('locked', flush=True);"
            "c.execute('SELECT id FROM run WHERE id = 2 FOR UPDATE')")
    victim = subprocess.Popen([sys.executable, "-c", code, empty_db_url], stdout=subprocess.PIPE, text=True)
    try:
        assert victim.stdout.readline().strip() == "locked"
        with psycopg.connect(empty_db_url, autocommit=True) as probe:
            deadline = time.monotonic() + 10
            while not probe.execute("SELECT 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock'").fetchall():
                assert time.monotonic() < deadline
                time.sleep(0.05)
            victim.kill()
            victim.wait()
            killed = time.monotonic()
            free = []
            while time.monotonic() - killed < 15 and not free:
                free = probe.execute("SELECT id FROM run WHERE id = 1 FOR UPDATE SKIP LOCKED").fetchall()
                time.sleep(0.2)
            assert free == [(1,)]
    finally:
        victim.kill()
        holder.close()
