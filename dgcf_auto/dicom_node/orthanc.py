"""The few Orthanc REST calls the DICOM node needs, with plain `requests`.

Why not pyorthanc or orthanc-api-client: the node uses eight endpoints (changes, series, instance tags and
files, upload, metadata, modality store, system), each one HTTP request with a JSON or DICOM body; a thin
`requests.Session` keeps the surface small, adds no dependency beyond `requests`, and works with any Orthanc
from 1.5 on (https://orthanc.uclouvain.be/book/users/rest.html).

Two kinds of failure: `OrthancUnavailable` (no connection, a timeout, a 5xx answer: wait and try again) and
`DGCFError` (Orthanc answered no: wrong credentials, an unknown modality, a refused instance).
"""
from __future__ import annotations

from dgcf_auto.errors import DGCFError

# The user-defined metadata (declared in Orthanc's "UserMetadata") that records the outcome on the source series.
METADATA_NAME = "dgcf"


class OrthancUnavailable(Exception):
    """Orthanc did not answer (down, restarting, network): transient, retried with back-off."""


class WrongCredentials(DGCFError):
    """Orthanc answered 401: the node's configuration is wrong, not the series."""


class Orthanc:
    """An Orthanc server at `url`, with HTTP basic authentication when `user` is given."""

    def __init__(self, url: str, user: str | None = None, password: str | None = None, timeout: float = 60.0):
        import requests

        self.url = url.rstrip("/")
        self.timeout = timeout
        self.session = requests.Session()
        if user is not None:
            self.session.auth = (user, password or "")

    def _request(self, method: str, path: str, **kwargs):
        import requests

        try:
            response = self.session.request(method, f"{self.url}{path}", timeout=self.timeout, **kwargs)
        except requests.RequestException as exc:  # connection refused, reset, timeout
            raise OrthancUnavailable(f"Orthanc at {self.url}: {type(exc).__name__}") from None
        if response.status_code >= 500:
            raise OrthancUnavailable(f"Orthanc at {self.url}: {method} {path} answered {response.status_code}")
        if response.status_code == 401:
            raise WrongCredentials(f"Orthanc at {self.url} refused the credentials (401): check --user and "
                            f"--password_file against its RegisteredUsers")
        if response.status_code >= 400:
            detail = _details(response)
            raise DGCFError(f"Orthanc at {self.url}: {method} {path} answered {response.status_code}"
                            + (f" ({detail})" if detail else ""))
        return response

    def get(self, path: str):
        return self._request("GET", path).json()

    def system(self) -> dict:
        return self.get("/system")

    def changes(self, since: int, limit: int = 100) -> dict:
        """{'Changes': [...], 'Done': bool, 'Last': int} after change number `since`."""
        return self.get(f"/changes?since={int(since)}&limit={int(limit)}")

    def series(self, series_id: str) -> dict:
        return self.get(f"/series/{series_id}")

    def instance_tags(self, instance_id: str) -> dict:
        return self.get(f"/instances/{instance_id}/simplified-tags")

    def instance_file(self, instance_id: str) -> bytes:
        return self._request("GET", f"/instances/{instance_id}/file").content

    def upload(self, data: bytes) -> dict:
        """POST /instances: {'ID', 'ParentSeries', 'Status': 'Success' | 'AlreadyStored', ...}."""
        return self._request("POST", "/instances", data=data,
                             headers={"Content-Type": "application/dicom"}).json()

    def set_metadata(self, series_id: str, value: str) -> None:
        self._request("PUT", f"/series/{series_id}/metadata/{METADATA_NAME}", data=value.encode())

    def metadata(self, series_id: str) -> str | None:
        try:
            return self._request("GET", f"/series/{series_id}/metadata/{METADATA_NAME}").text
        except DGCFError:
            return None

    def store_to_modality(self, modality: str, series_id: str) -> None:
        """C-STORE the series to a modality of Orthanc's DicomModalities, waiting until it is sent."""
        self._request("POST", f"/modalities/{modality}/store",
                      json={"Resources": [series_id], "Synchronous": True})


def _details(response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text.strip()[:200]
    if isinstance(body, dict):
        return str(body.get("Details") or body.get("Message") or "")[:200]
    return ""
