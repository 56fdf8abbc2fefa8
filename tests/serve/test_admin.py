"""`landmarks serve-admin RUN token ...`, what `landmarks serve` says at start, and `--trained-only` against the store."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi import APIRouter
from fastapi.testclient import TestClient

from landmarks.cli import main
from landmarks.serve.admin import startup_notes
from landmarks.serve.app import create_app
from landmarks.serve.routers import access, references, review
from landmarks.serve.settings import Settings
from landmarks.store import STORE_FILE
from tests_helpers import PURPLE, bearer, jpeg, photo_files


def test_token_create_list_revoke_through_the_cli(run: Path, capsys):
    assert main(["serve-admin", str(run), "token", "create", "--role", "admin", "--name", "Ada"]) == 0
    secret = capsys.readouterr().out.strip().splitlines()[-1]
    assert secret.startswith("lmk_") and len(secret) > 40
    assert secret.encode() not in (run / STORE_FILE).read_bytes()  # only its hash is stored
    assert main(["serve-admin", str(run), "token", "create", "--role", "contributor"]) == 0
    capsys.readouterr()
    assert main(["serve-admin", str(run), "token", "list"]) == 0
    listing = capsys.readouterr().out
    assert "admin" in listing and "Ada" in listing and "contributor" in listing and "lmk_" not in listing
    with TestClient(create_app(run, backend="torch")) as client:
        assert client.get("/me", headers=bearer(secret)).json()["role"] == "admin"
        assert main(["serve-admin", str(run), "token", "revoke", "1"]) == 0
        assert client.get("/me", headers=bearer(secret)).status_code == 401  # at once, no restart
    assert main(["serve-admin", str(run), "token", "revoke", "1"]) == 2
    assert "No active token with id 1" in capsys.readouterr().err
    assert main(["serve-admin", str(run.parent), "token", "list"]) == 2  # not a run folder


def test_serve_says_how_to_create_the_first_admin_token(run: Path):
    notes = startup_notes(run, Settings())
    assert "no admin token yet" in notes[0] and f"landmarks serve-admin {run} token create --role admin" in notes[0]
    assert "--open" in startup_notes(run, Settings(open=True))[0]
    main(["serve-admin", str(run), "token", "create", "--role", "admin"])
    assert not any("no admin token" in n for n in startup_notes(run, Settings()))


def test_a_landmark_taught_through_the_service_is_known_to_predict_unless_trained_only(run: Path, tmp_path: Path, capsys):
    query = tmp_path / "query.jpg"
    query.write_bytes(jpeg(PURPLE, seed=99))
    with TestClient(create_app(run, backend="torch", settings=Settings(open=True))) as client:
        assert client.post("/landmarks", data={"name": "Purple Palace"}, files=photo_files(PURPLE, 5)).status_code == 200
    capsys.readouterr()
    assert main(["predict", str(run), str(query), "--json", "--backend", "torch"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[0])["name"] == "Purple Palace"
    assert main(["predict", str(run), str(query), "--json", "--backend", "torch", "--trained-only"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[0])["name"] != "Purple Palace"


@pytest.mark.parametrize("router", [references.router, review.router, access.router], ids=["references", "review", "access"])
def test_every_route_of_an_admin_router_refuses_anyone_but_an_admin(run: Path, router: APIRouter):
    """The admin-only routers declare the admin check once, and it holds for each of their routes."""
    with TestClient(create_app(run)) as client:
        for route in router.routes:
            path = route.path.replace("{landmark_id}", "1").replace("{image_id}", "x").replace("{suggestion_id}", "1") \
                .replace("{token_id}", "1")
            for method in route.methods:
                answer = client.request(method, path, json={"role": "admin", "landmark_id": 1})
                assert answer.status_code == 401, (method, path, answer.status_code)
