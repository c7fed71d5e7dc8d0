# The image of every Airflow service of docker-compose.yaml (and of the identifier service): the official
# Airflow 3.3.2 image plus the project's pinned requirements and the dicom_relay library.
#
#   docker compose build        (docker-compose.yaml builds it; no need to run this by hand)
#
# The Python version matches the one requirements.txt was frozen with.
ARG AIRFLOW_BASE_IMAGE=apache/airflow:3.3.2-python3.11
FROM ${AIRFLOW_BASE_IMAGE}

# Folders the containers write to, owned by the airflow user (uid 50000, gid 0) so that named volumes mounted
# there start out writable: the identifier service's SQLite mapping, and the relay's data area.
USER root
RUN mkdir -p /var/lib/dicom-relay/identifiers /data/inbox /data/relay /opt/dicom-relay \
    && chown -R airflow:0 /var/lib/dicom-relay /data /opt/dicom-relay \
    && chmod 0750 /var/lib/dicom-relay/identifiers
# Tesseract's English model: burned-in text is read by tesserocr (requirements.txt), which brings the engine only.
RUN apt-get update && apt-get install -y --no-install-recommends tesseract-ocr-eng \
    && rm -rf /var/lib/apt/lists/*
USER airflow

# Pinned requirements first (a layer that changes rarely). apache-airflow is pinned on the same line, as the
# Airflow docs advise, so that nothing in requirements.txt can move the image's Airflow.
COPY --chown=airflow:0 requirements.txt /opt/dicom-relay/requirements.txt
RUN pip install --no-cache-dir "apache-airflow==${AIRFLOW_VERSION}" -r /opt/dicom-relay/requirements.txt

# The project, editable: docker-compose.yaml mounts ./include over /opt/dicom-relay/include, so the containers
# run the checkout's code, and `import dicom_relay` works in every service (triggerer included).
COPY --chown=airflow:0 pyproject.toml /opt/dicom-relay/pyproject.toml
COPY --chown=airflow:0 include /opt/dicom-relay/include
RUN pip install --no-cache-dir --no-deps -e /opt/dicom-relay \
    && python -c "import dicom_relay.identifiers, dicom_relay.config"
