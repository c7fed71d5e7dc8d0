"""Registers the "Relay batches" page (dicom_relay.airflow.ui) in the Airflow UI's navigation."""

from airflow.plugins_manager import AirflowPlugin

from dicom_relay.airflow.ui import app


class DicomRelayPlugin(AirflowPlugin):
    name = "dicom_relay"
    fastapi_apps = [{"app": app, "url_prefix": "/relay", "name": "dicom-relay batches"}]
    external_views = [
        {"name": "Relay batches", "href": "relay/", "destination": "nav", "url_route": "relay-batches",
         "category": "browse"},
    ]
