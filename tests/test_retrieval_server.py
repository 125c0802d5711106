"""The retriever service over HTTP: both clients' APIs, bad requests, restarts, and per-job services.

These run on a BM25 index (no encoder to load); the dense service is exercised in
test_retrieval_index.py.
"""

from __future__ import annotations

import copy
import gc
import socket
import threading
from pathlib import Path

import httpx
import pytest
import yaml

from research_rl import paths
from research_rl.retrieval import index
from research_rl.retrieval.client import HttpSearchClient, InProcessSearchClient, RetrieverError
from research_rl.retrieval.searcher import load_searcher
from research_rl.retrieval.server import ServerThread, app_settings
from research_rl.retrieval.service import retriever_for_job, start_service
from research_rl.retrieval.synthetic import write_synthetic_corpus

REPO_ROOT = Path(__file__).resolve().parents[1]
N_PASSAGES = 200


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    cfg = yaml.safe_load((REPO_ROOT / "config" / "config.yaml").read_text())
    cfg["paths"]["data"] = str(tmp_path_factory.mktemp("retrieval-server"))
    cfg["corpus"]["name"] = "synthetic"
    cfg["retriever"]["kind"] = "bm25"
    people = write_synthetic_corpus(paths.corpus_path(cfg), N_PASSAGES, seed=11)
    index.run(cfg, "bm25")
    return cfg, people, load_searcher(cfg)


@pytest.fixture(scope="module")
def service(world):
    cfg, _, searcher = world
    with ServerThread(searcher, app_settings(cfg)) as server:
        yield server


def name(world, row: int) -> str:
    return world[1][row]["name"]


def is_doc(doc) -> bool:
    return isinstance(doc, dict) and set(doc) == {"id", "contents"} and isinstance(doc["id"], str)


def post(service, route: str, body) -> httpx.Response:
    return httpx.post(f"{service.url}{route}", json=body, timeout=30)


def test_health(service):
    body = httpx.get(f"{service.url}/health").json()
    assert body["status"] == "healthy" and body["passages"] == N_PASSAGES


def test_loaded_index_is_kept_out_of_garbage_collection(service):
    # A full collection over the loaded model and index stalled a batch by ~250 ms (benchmarks/retriever.py).
    assert gc.get_freeze_count() > 0


def test_research_search(world, service):
    docs = post(service, "/search", {"query": f"Who is {name(world, 5)}?", "top_n": 3}).json()
    assert len(docs) == 3 and all(map(is_doc, docs)) and docs[0]["id"] == "5"
    assert len(post(service, "/search", {"query": name(world, 5)}).json()) == 10  # top_n defaults to 10
    docs, scores = post(service, "/search", {"query": name(world, 6), "top_n": 2, "return_score": True}).json()
    assert [d["id"] for d in docs][0] == "6" and len(scores) == 2 and all(isinstance(s, float) for s in scores)


def test_research_batch_search_as_their_rollout_calls_it(world, service):
    # ReSearch's vllm_rollout posts {'query': [...], 'top_n': 5} and reads item['contents'] per query.
    response = post(service, "/batch_search", {"query": [name(world, 1), name(world, 2)], "top_n": 5})
    lists = response.json()
    assert len(lists) == 2 and all(len(docs) == 5 and all(map(is_doc, docs)) for docs in lists)
    assert [docs[0]["id"] for docs in lists] == ["1", "2"]
    assert name(world, 2) in "\n\n".join(line["contents"] for line in lists[1])
    docs, scores = post(service, "/batch_search", {"query": [name(world, 3)], "top_n": 4, "return_score": True}).json()
    assert docs[0][0]["id"] == "3" and len(scores) == 1 and len(scores[0]) == 4


def test_search_r1_retrieve(world, service):
    body = {"queries": [name(world, 7), name(world, 8)], "topk": 3, "return_scores": True}
    result = post(service, "/retrieve", body).json()["result"]
    assert len(result) == 2 and all(len(hits) == 3 for hits in result)
    assert all(set(hit) == {"document", "score"} and is_doc(hit["document"]) for hits in result for hit in hits)
    assert [hits[0]["document"]["id"] for hits in result] == ["7", "8"]
    assert isinstance(result[0][0]["score"], float)
    plain = post(service, "/retrieve", {"queries": [name(world, 9)], "topk": 2, "return_scores": False}).json()
    assert len(plain["result"][0]) == 2 and all(map(is_doc, plain["result"][0]))
    default = post(service, "/retrieve", {"queries": [name(world, 9)]}).json()["result"]
    assert len(default[0]) == world[0]["retriever"]["topk"] and default[0][0]["id"] == "9"


BAD_REQUESTS = [
    ("/search", {"top_n": 3}, 422),  # missing query
    ("/search", {"query": "", "top_n": 3}, 400),
    ("/search", {"query": "   ", "top_n": 3}, 400),
    ("/search", {"query": 42, "top_n": 3}, 422),
    ("/search", {"query": None}, 422),
    ("/search", {"query": "a", "top_n": "3"}, 422),
    ("/search", {"query": "a", "top_n": 2.5}, 422),
    ("/search", {"query": "a", "top_n": 0}, 422),
    ("/search", {"query": "a", "top_n": -4}, 422),
    ("/search", {"query": "a", "top_n": 101}, 422),  # max_top_k 100
    ("/search", {"query": "a" * 2049}, 413),  # max_query_chars 2048
    ("/search", ["a list", "not an object"], 422),
    ("/batch_search", {"query": "not a list", "top_n": 3}, 422),
    ("/batch_search", {"query": ["ok", ""], "top_n": 3}, 400),
    ("/batch_search", {"query": ["ok", 7], "top_n": 3}, 422),
    ("/batch_search", {"query": ["q"] * 513, "top_n": 3}, 413),  # max_batch_size 512
    ("/retrieve", {"topk": 3}, 422),
    ("/retrieve", {"queries": ["a"], "topk": 0}, 422),
    ("/retrieve", {"queries": ["a"], "topk": "five"}, 422),
    ("/retrieve", {"queries": ["a"], "return_scores": "yes"}, 422),
]


@pytest.mark.parametrize(("route", "body", "status"), BAD_REQUESTS)
def test_bad_request_gets_its_4xx_and_the_service_keeps_serving(world, service, route, body, status):
    response = post(service, route, body)
    assert response.status_code == status, response.text
    assert response.json()["detail"]
    assert post(service, "/search", {"query": name(world, 4), "top_n": 1}).json()[0]["id"] == "4"


@pytest.mark.parametrize(
    ("content", "status"),
    [(b'{"query": "unterminated', 422), (b"", 422), (b"\xff\xfe not utf8", 400), (b" " * ((1 << 20) + 1), 413)],
)
def test_malformed_or_oversized_body_gets_4xx(world, service, content, status):
    response = httpx.post(
        f"{service.url}/search", content=content, headers={"content-type": "application/json"}, timeout=30
    )
    assert response.status_code == status
    assert post(service, "/search", {"query": name(world, 4), "top_n": 1}).status_code == 200


def test_streamed_body_over_the_limit_gets_413(service):
    def chunks():
        for _ in range(40):
            yield b" " * 65536  # 2.5 MiB with no content-length header

    response = httpx.post(f"{service.url}/search", content=chunks(), timeout=30)
    assert response.status_code == 413


def test_unknown_route_is_404(service):
    assert httpx.get(f"{service.url}/nothing-here").status_code == 404
    assert httpx.post(f"{service.url}/v1/search", json={}).status_code == 404


def test_http_client_batches_and_keeps_order(world, service):
    with HttpSearchClient(service.url, max_batch_size=4) as client:
        results = client.batch_search([name(world, row) for row in range(10)], 2)
    assert [docs[0]["id"] for docs in results] == [str(row) for row in range(10)]
    assert all(len(docs) == 2 for docs in results)


def test_http_client_raises_at_once_on_4xx(service):
    with HttpSearchClient(service.url, retries=5, backoff_seconds=30) as client:
        with pytest.raises(RetrieverError, match="HTTP 400"):
            client.batch_search(["fine", ""], 3)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_http_client_raises_after_the_last_retry():
    with HttpSearchClient(f"http://127.0.0.1:{free_port()}", retries=2, backoff_seconds=0.01) as client:
        with pytest.raises(RetrieverError, match="failed 3 times"):
            client.batch_search(["anything"], 3)


def test_http_client_survives_a_service_restart(world):
    cfg, _, searcher = world
    server = ServerThread(searcher, app_settings(cfg))
    server.start()
    client = HttpSearchClient(server.url, retries=8, backoff_seconds=0.05)
    assert client.batch_search([name(world, 10)], 1)[0][0]["id"] == "10"
    server.stop()

    # The service comes back on the same port only after the client has seen it down.
    refused = threading.Event()
    real_post = client._http.post

    def watching_post(*args, **kwargs):
        try:
            return real_post(*args, **kwargs)
        except httpx.TransportError:
            refused.set()
            raise

    client._http.post = watching_post
    restarted = ServerThread(searcher, app_settings(cfg), port=server.port)

    def restart() -> None:
        if refused.wait(30):
            restarted.start()

    restarter = threading.Thread(target=restart)
    restarter.start()
    try:
        results = client.batch_search([name(world, 11), name(world, 12)], 1)
    finally:
        restarter.join(60)
        restarted.stop()
        client.close()
    assert refused.is_set()
    assert [docs[0]["id"] for docs in results] == ["11", "12"]


def test_in_process_mode_needs_no_server(world):
    cfg = world[0]
    with retriever_for_job(cfg, mode="in_process") as client:
        assert isinstance(client, InProcessSearchClient)
        assert client.batch_search([name(world, 13)], 2)[0][0]["id"] == "13"


def test_configured_url_is_used_as_is(world, service):
    cfg = copy.deepcopy(world[0])
    cfg["retriever"]["server"]["url"] = service.url
    with retriever_for_job(cfg) as client:
        assert isinstance(client, HttpSearchClient) and client.url == service.url
        assert client.batch_search([name(world, 14)], 1)[0][0]["id"] == "14"


def test_job_service_is_started_and_always_stopped(world):
    cfg = world[0]
    with retriever_for_job(cfg) as client:
        assert isinstance(client, HttpSearchClient) and client.url.startswith("http://127.0.0.1:")
        assert client.batch_search([name(world, 15)], 1)[0][0]["id"] == "15"
        url = client.url
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/health", timeout=5)

    with pytest.raises(ZeroDivisionError), start_service(cfg) as url:
        assert httpx.get(f"{url}/health", timeout=5).json()["status"] == "healthy"
        1 / 0  # noqa: B018 - the job fails while the service runs
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/health", timeout=5)
