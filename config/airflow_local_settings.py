"""Airflow's local settings for dicom-relay (Airflow imports this file first thing in every component, from
``$AIRFLOW_HOME/config``; docker-compose.yaml mounts this folder there, ``make run`` links it).

The only setting: the relay's heavy modules are imported once in the components that fork task and DAG-parsing
processes, so that each task starts without importing them again (see dicom_relay.airflow.preload).
"""

from dicom_relay.airflow.preload import preload

preload()
