"""The service's ASGI middleware: body limits counted while the body streams in (chunked or not), 401 before the body
is read, and the security headers of every answer."""

from __future__ import annotations

import json
import select
import socket
from pathlib import Path
from urllib.parse import urlparse

from fastapi.testclient import TestClient
from tests_helpers import UNLIMITED, bearer, jpeg, running_server

from landmarks.serve.admin import create_token
from landmarks.serve.app import create_app
from landmarks.serve.settings import JSON_BODY_BYTES, MB, Settings

def _raw_request(url: str, head: str, chunks: int, chunk_bytes: int, preamble: bytes = b"") -> tuple[str, int]:
    """Send ``head`` (and ``preamble``, the body's first chunk) then up to ``chunks`` chunks of a chunked body until
    the server answers: (status line, body bytes sent before the answer came)."""
    address = urlparse(url)
    with socket.create_connection((address.hostname, address.port), timeout=15) as sock:
        sock.sendall(head.encode())
        if preamble:
            sock.sendall(f"{len(preamble):x}\r\n".encode() + preamble + b"\r\n")
        payload = f"{chunk_bytes:x}\r\n".encode() + b"\xff" * chunk_bytes + b"\r\n"
        sent = 0
        for _ in range(chunks):
            if select.select([sock], [], [], 0)[0]:
                break
            try:
                sock.sendall(payload)
            except OSError:  # the server answered and closed: the answer is waiting to be read
                break
            sent += chunk_bytes
        else:
            if chunks:  # with no chunk at all the body is never finished: the answer must come without it
                sock.sendall(b"0\r\n\r\n")
        answer = b""
        while b"\r\n" not in answer:
            data = sock.recv(65536)
            if not data:
                break
            answer += data
        return answer.split(b"\r\n", 1)[0].decode(), sent


def test_a_chunked_upload_to_a_real_server_stops_being_read_at_the_limit(run: Path):
    app = create_app(run, backend="torch", settings=Settings(**UNLIMITED, max_request_bytes=1 * MB))
    with running_server(app) as url:
        head = ("POST /predict HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                "Content-Type: multipart/form-data; boundary=b\r\n\r\n")
        part = b'--b\r\nContent-Disposition: form-data; name="photo"; filename="big.jpg"\r\nContent-Type: image/jpeg\r\n\r\n'
        status, sent = _raw_request(url, head, chunks=1024, chunk_bytes=64 * 1024, preamble=part)  # a 64 MB photo
        assert status.endswith("413 Request Entity Too Large") or " 413 " in status, status
        assert sent < 24 * MB  # 1 MB read, the rest at most what the sockets' buffers took


def test_a_request_without_a_valid_token_is_refused_before_its_body_is_read(run: Path):
    admin = create_token(run, "admin", "Ada")[1]
    with running_server(create_app(run, backend="torch", settings=Settings(**UNLIMITED))) as url:
        for path, token in (("/feedback", None), ("/landmarks", "lmk_bogus"), ("/tokens", None)):
            authorization = f"Authorization: Bearer {token}\r\n" if token else ""
            head = (f"POST {path} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n{authorization}"
                    "Content-Type: application/json\r\n\r\n")
            status, sent = _raw_request(url, head, chunks=0, chunk_bytes=0)  # the head only: no body byte yet
            assert " 401 " in status and sent == 0, (path, status)
    with TestClient(create_app(run, backend="torch", settings=Settings(**UNLIMITED))) as client:
        body = json.dumps({"upload_id": "x" * (JSON_BODY_BYTES + 1), "landmark_id": 7}).encode()
        response = client.post("/feedback", content=iter([body[:500], body[500:]]), headers={
            **bearer(admin), "Content-Type": "application/json"})
        assert response.status_code == 413 and response.json()["detail"] == "The request is larger than 1 MB."
        response = client.post("/feedback", json={"upload_id": "nope", "landmark_id": 7}, headers=bearer(admin))
        assert response.status_code == 404  # under the limit, with a token: the route answers
        photos = {"photo": ("q.jpg", jpeg((9, 9, 9)), "image/jpeg")}
        assert client.post("/predict", files=photos).status_code == 200


def test_every_answer_carries_the_security_headers(run: Path, monkeypatch):
    from importlib import resources

    from landmarks.serve.middleware import inline_script_hashes

    page = (resources.files("landmarks") / "serve" / "static" / "index.html").read_text()
    with TestClient(create_app(run, backend="torch", settings=Settings(**UNLIMITED)),
                    raise_server_exceptions=False) as client:
        answers = {"page": client.get("/"), "health": client.get("/health"), "live": client.get("/live/"),
                   "live.js": client.get("/live/live.js"), "docs": client.get("/docs"), "missing": client.get("/nope"),
                   "401": client.get("/tokens"), "422": client.get("/suggestions/abc/photo", headers=bearer("x")),
                   "413": client.post("/feedback", content=b"{" * (JSON_BODY_BYTES + 1),
                                      headers={"Content-Type": "application/json"}),
                   "predict": client.post("/predict", files={"photo": ("q.jpg", jpeg((9, 9, 9)), "image/jpeg")})}
        monkeypatch.setattr(client.app.state.service, "health", lambda: 1 / 0)
        answers["500"] = client.get("/health")
    assert answers["500"].status_code == 500 and str(run) not in answers["500"].text
    for what, answer in answers.items():
        policy = answer.headers.get("content-security-policy", "")
        assert "frame-ancestors 'none'" in policy, what
        assert answer.headers.get("x-frame-options") == "DENY", what
        assert answer.headers.get("x-content-type-options") == "nosniff", what
        assert answer.headers.get("referrer-policy") == "strict-origin-when-cross-origin", what
    policy = answers["live"].headers["content-security-policy"]
    assert "'wasm-unsafe-eval'" in policy and "worker-src 'self' blob:" in policy and "'unsafe-eval'" not in policy
    hashes = inline_script_hashes(page)
    assert hashes and all(h in answers["page"].headers["content-security-policy"] for h in hashes)
    assert "cdn.jsdelivr.net" in answers["docs"].headers["content-security-policy"]
    assert "cdn.jsdelivr.net" not in policy
