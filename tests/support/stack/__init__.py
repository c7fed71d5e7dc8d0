"""Start and stop each local service (PostgreSQL, Orthanc, GCS emulator, identifier service, Airflow 3), for
``make run`` / ``make stop`` and for the test fixtures alike."""
