#!/bin/bash
# Run once by the postgres image on an empty data directory (/docker-entrypoint-initdb.d): besides Airflow's
# metadata database (POSTGRES_DB), create the relay's own status database and its owner. The password comes
# from RELAY_DB_PASSWORD and goes through a psql variable, so it is quoted correctly whatever it holds.
set -euo pipefail
: "${RELAY_DB_PASSWORD:?RELAY_DB_PASSWORD must be set}"
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
     -v relay_password="$RELAY_DB_PASSWORD" <<'SQL'
CREATE ROLE relay LOGIN PASSWORD :'relay_password';
CREATE DATABASE relay OWNER relay;
REVOKE ALL ON DATABASE relay FROM PUBLIC;
SQL
