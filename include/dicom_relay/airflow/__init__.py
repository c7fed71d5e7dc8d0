"""The only place where dicom-relay meets Airflow: the inbox trigger and operator, and the task runner.

Everything here is a thin adapter over ``dicom_relay.pipeline``; the library itself never imports Airflow.
The trigger lives here (not in ``dags/``) because the triggerer must import it: the package is installed into
every Airflow component's environment.
"""
