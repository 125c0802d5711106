"""Clients of the retriever: over HTTP (the service's /batch_search) or in-process (a Searcher).

Rollouts and evaluation ask `batch_search(queries, top_n)` and get one list of `{"id", "contents"}`
documents per query, whichever client they hold.
"""

from __future__ import annotations

import sys
import time
from typing import Any, Protocol

import httpx

from research_rl.retrieval.searcher import Searcher

MAX_BACKOFF_SECONDS = 10.0


class SearchClient(Protocol):
    def batch_search(self, queries: list[str], top_n: int) -> list[list[dict]]: ...


class RetrieverError(RuntimeError):
    """The retriever refused a request (4xx) or stayed unreachable through every retry."""


class InProcessSearchClient:
    """Search a Searcher loaded in this process: no server, no HTTP (tests, cheap CPU runs)."""

    def __init__(self, searcher: Searcher) -> None:
        self.searcher = searcher

    def batch_search(self, queries: list[str], top_n: int) -> list[list[dict]]:
        return self.searcher.batch_search(list(queries), top_n)[0]

    def close(self) -> None:
        pass


class HttpSearchClient:
    """POST /batch_search in chunks of max_batch_size; retry with exponential backoff while the service
    is down, restarting or answering 5xx; a 4xx is the caller's mistake and raises at once."""

    def __init__(
        self,
        url: str,
        timeout_seconds: float = 30.0,
        retries: int = 8,
        backoff_seconds: float = 0.5,
        max_batch_size: int = 512,
    ) -> None:
        self.url = url.rstrip("/")
        self.retries = retries
        self.backoff_seconds = backoff_seconds
        self.max_batch_size = max_batch_size
        self._http = httpx.Client(timeout=timeout_seconds)

    def batch_search(self, queries: list[str], top_n: int) -> list[list[dict]]:
        results: list[list[dict]] = []
        for start in range(0, len(queries), self.max_batch_size):
            chunk = list(queries[start : start + self.max_batch_size])
            results.extend(self._post("/batch_search", {"query": chunk, "top_n": top_n}))
        return results

    def health(self) -> dict[str, Any]:
        response = self._http.get(f"{self.url}/health")
        response.raise_for_status()
        return response.json()

    def _post(self, route: str, body: dict[str, Any]) -> Any:
        last_error = ""
        for attempt in range(self.retries + 1):
            if attempt:
                delay = min(self.backoff_seconds * 2 ** (attempt - 1), MAX_BACKOFF_SECONDS)
                print(f"retriever: {last_error}; retry {attempt}/{self.retries} in {delay:.1f} s", file=sys.stderr)
                time.sleep(delay)
            try:
                response = self._http.post(f"{self.url}{route}", json=body)
            except httpx.TransportError as error:  # refused, reset, timed out: the service may be restarting
                last_error = f"{type(error).__name__}: {error}"
                continue
            if response.status_code >= 500:
                last_error = f"HTTP {response.status_code}: {response.text[:200]}"
                continue
            if response.status_code >= 400:
                raise RetrieverError(
                    f"the retriever at {self.url} refused the request: "
                    f"HTTP {response.status_code}: {response.text[:500]}"
                )
            return response.json()
        raise RetrieverError(
            f"the retriever at {self.url}{route} failed {self.retries + 1} times; last error: {last_error}"
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> HttpSearchClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def http_client_from_config(cfg: dict[str, Any], url: str) -> HttpSearchClient:
    client_cfg = cfg["retriever"].get("client", {})
    return HttpSearchClient(
        url,
        timeout_seconds=client_cfg.get("timeout_seconds", 30.0),
        retries=client_cfg.get("retries", 8),
        backoff_seconds=client_cfg.get("backoff_seconds", 0.5),
        max_batch_size=cfg["retriever"]["server"].get("max_batch_size", 512),
    )
