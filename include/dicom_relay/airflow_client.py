"""A small client for the Airflow REST API v2 (token auth). No Airflow import: the CLI and the tests use it.

    client = AirflowClient.from_env()          # AIRFLOW_URL, AIRFLOW_USER, AIRFLOW_PASSWORD
    client.trigger("process_study", "requeue__<batch_id>__1", {"batch_id": "<batch_id>"})
"""

from __future__ import annotations

import os
from typing import Any, Mapping

import requests


class AirflowClientError(RuntimeError):
    """The Airflow API could not be reached or refused a request; the message holds no secret."""


class AirflowClient:
    """A small client for the REST API v2 (token auth)."""

    def __init__(self, url: str, user: str, password: str):
        self.url = url.rstrip("/")
        self.user = user
        self.password = password
        self._token: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "AirflowClient":
        env = os.environ if env is None else env
        missing = [k for k in ("AIRFLOW_URL", "AIRFLOW_USER", "AIRFLOW_PASSWORD") if not env.get(k)]
        if missing:
            raise AirflowClientError(f"set {', '.join(missing)} (after `make run`: . .run/stack.env)")
        return cls(env["AIRFLOW_URL"], env["AIRFLOW_USER"], env["AIRFLOW_PASSWORD"])

    def _headers(self) -> dict[str, str]:
        if self._token is None:
            r = requests.post(f"{self.url}/auth/token", json={"username": self.user, "password": self.password}, timeout=30)
            r.raise_for_status()
            self._token = r.json()["access_token"]
        return {"Authorization": f"Bearer {self._token}"}

    def request(self, method: str, path: str, **kw) -> requests.Response:
        r = requests.request(method, f"{self.url}/api/v2{path}", headers=self._headers(), timeout=30, **kw)
        if r.status_code == 401:
            self._token = None
            r = requests.request(method, f"{self.url}/api/v2{path}", headers=self._headers(), timeout=30, **kw)
        return r

    def get(self, path: str, **params) -> Any:
        r = self.request("GET", path, params=params)
        r.raise_for_status()
        return r.json()

    def dag_ids(self) -> set[str]:
        return {d["dag_id"] for d in self.get("/dags", limit=100)["dags"]}

    def unpause(self, dag_id: str) -> None:
        self.request("PATCH", f"/dags/{dag_id}", json={"is_paused": False}).raise_for_status()

    def dag_runs(self, dag_id: str) -> list[dict]:
        return self.get(f"/dags/{dag_id}/dagRuns", limit=100, order_by="-run_after")["dag_runs"]

    def task_instances(self, dag_id: str, run_id: str) -> list[dict]:
        return self.get(f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances")["task_instances"]

    def xcom(self, dag_id: str, run_id: str, task_id: str) -> Any:
        return self.get(f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/return_value")["value"]

    def trigger(self, dag_id: str, run_id: str, conf: dict) -> requests.Response:
        return self.request("POST", f"/dags/{dag_id}/dagRuns", json={"dag_run_id": run_id, "logical_date": None, "conf": conf})
