"""Airflow's local settings for dicom-relay (Airflow imports this file first thing in every component, from
``$AIRFLOW_HOME/config``; docker-compose.yaml mounts this folder there, ``make run`` links it).

The only setting: the relay's heavy modules are imported once in the components that fork task and DAG-parsing
processes, so that each task starts without importing them again (see dicom_relay.airflow.preload).
"""

try:
    from dicom_relay.airflow.preload import preload
except ImportError:  # an interpreter without the relay's library (a bare Airflow image): nothing to preload
    preload = None

if preload is not None:
    preload()
