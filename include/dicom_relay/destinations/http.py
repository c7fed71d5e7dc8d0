"""What the destinations' HTTP clients share: a ``requests.Session`` that reads the environment once.

Used by the GCS client's session (``gcs.GcsDestination.client``) and by the sessions of Orthanc's REST uploads
(``orthanc_rest``): both send hundreds of requests per study to one endpoint.
"""

from __future__ import annotations

import os

import requests


def read_environment_once(session: requests.Session, endpoint: str) -> None:
    """Settle what requests would read from the environment for every request, once, for the one endpoint.

    With ``trust_env`` (the default) requests scans every environment variable for proxy settings, looks for a
    netrc file and reads the CA bundle variables on each request: about a sixth of a millisecond per request with
    a few dozen variables, more in an Airflow worker's environment, a twentieth of a GCS upload's CPU. The same
    settings are taken once here, with requests' own functions: the proxy for this endpoint (``HTTPS_PROXY`` /
    ``NO_PROXY``...) and ``REQUESTS_CA_BUNDLE`` / ``CURL_CA_BUNDLE``. A netrc file is not consulted: the relay's
    requests carry their own credentials (the GCS client's, Orthanc's basic auth).
    """
    session.proxies.update(requests.utils.get_environ_proxies(endpoint))
    if session.verify is True:
        session.verify = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True
    session.trust_env = False
