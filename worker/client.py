"""The worker's HTTP client for the prediction service (it never imports the service)."""

from __future__ import annotations

from typing import Any

import httpx
import pyarrow as pa

from scorebox.errors import ServiceRefusedError, ServiceUnavailableError, one_line
from scorebox.settings import Settings

ARROW_MEDIA_TYPE = "application/vnd.apache.arrow.stream"


class ServiceClient:
    """Calls the service's `/v1/model` and `/v1/predict/arrow` endpoints."""

    def __init__(self, base_url: str, token: str | None, timeout: float) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout)

    @classmethod
    def from_settings(cls, settings: Settings) -> ServiceClient:
        """A client for SCOREBOX_SERVICE_URL, SCOREBOX_API_TOKEN and SCOREBOX_SERVICE_TIMEOUT."""
        token = settings.api_token.get_secret_value() if settings.api_token else None
        return cls(settings.service_url, token, settings.service_timeout)

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def __enter__(self) -> ServiceClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _request(self, method: str, path: str, **kwargs: object) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)  # type: ignore[arg-type]
        except httpx.TransportError as exc:
            raise ServiceUnavailableError(
                f"service at {self.base_url} (SCOREBOX_SERVICE_URL) unreachable: {exc}"
            ) from None
        if response.status_code >= 500:
            raise ServiceUnavailableError(
                f"service at {self.base_url} answered {response.status_code}: {response.text[:200]}"
            )
        if response.status_code == 401:
            raise ServiceRefusedError("service refused the token (SCOREBOX_API_TOKEN)", 401)
        if response.status_code == 413:
            raise ServiceRefusedError(
                f"service refused a batch as too large: {_reason(response)}; lower "
                "SCOREBOX_CHUNK_SIZE or raise the service's limits",
                413,
            )
        if response.status_code >= 400:
            raise ServiceRefusedError(
                f"service answered {response.status_code} to {path}: {_reason(response)}",
                response.status_code,
            )
        return response

    def describe(self) -> dict[str, Any]:
        """What the service says of its model: tag, features, task, metrics..."""
        described: dict[str, Any] = self._request("GET", "/v1/model").json()
        return described

    def score(self, batch: pa.Table, tag: str | None = None) -> tuple[str, pa.Table]:
        """Score an Arrow table of the model's feature columns with version ``tag`` (default:
        the one the service serves now); return the model tag and the result, one row for each
        row sent, in order."""
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, batch.schema) as writer:
            writer.write_table(batch)
        response = self._request(
            "POST",
            "/v1/predict/arrow",
            content=sink.getvalue().to_pybytes(),
            headers={
                "content-type": ARROW_MEDIA_TYPE,
                **({"x-scorebox-model": tag} if tag else {}),
            },
        )
        tag = response.headers.get("x-scorebox-model", "")
        return tag, pa.ipc.open_stream(response.content).read_all()


def _reason(response: httpx.Response) -> str:
    """The service's own explanation of a refusal, on one line."""
    try:
        body = response.json()
    except ValueError:
        body = None
    reason = str(body["error"]) if isinstance(body, dict) and "error" in body else response.text
    return one_line(reason)
