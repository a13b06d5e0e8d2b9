"""API keys: open until the first key exists; then every request needs one, and a key sees
only what keys of its name created (404 for the rest), unless it is an admin key."""

from __future__ import annotations

import hashlib
import re

import pytest
from sqlalchemy import select

from hpo.client import APIError, Client
from hpo.cli import main as hpo_main
from service import keys
from service.auth import COOKIE
from hpo.db import make_engine, make_sessionmaker
from hpo.db.models import ApiKeyRecord
from tests.support.studies import tiny_spec

STUDIES = "/api/v1/studies"
DATASETS = "/api/v1/datasets"
VIEWS = "/api/v1/views"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def tokens(api, settings) -> dict[str, str]:
    """Keys for alice, bob and an admin on the app's database (the app is already running)."""
    return {name: keys.create_key(settings.database_url, name, admin=name == "admin")[1]
            for name in ("alice", "bob", "admin")}


def submit(api, token: str, **overrides) -> dict:
    response = api.post(STUDIES, json=tiny_spec(**overrides), headers=bearer(token))
    assert response.status_code == 201, response.text
    return response.json()


def upload(api, token: str) -> dict:
    csv = "text,label\n" + "".join(f"msg {i},{'spam' if i % 2 else 'ham'}\n" for i in range(24))
    response = api.post(DATASETS, files={"file": ("s.csv", csv.encode())}, data={"task": "classification"},
                        headers=bearer(token))
    assert response.status_code == 201, response.text
    return response.json()


def test_open_until_the_first_key_exists(api, settings):
    assert api.get(STUDIES).status_code == 200
    assert api.post(STUDIES, json=tiny_spec()).json()["owner"] is None

    keys.create_key(settings.database_url, "alice")  # while the app runs: no restart needed

    response = api.get(STUDIES)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.json()["detail"][0]["field"] == "Authorization"
    assert "hpo keys create" in response.json()["detail"][0]["message"]


def test_probes_docs_and_assets_stay_open(api, tokens):
    for path in ("/healthz", "/readyz", "/openapi.json", "/docs", "/login", "/assets/app.css"):
        assert api.get(path).status_code == 200, path
    for path in (STUDIES, DATASETS, f"{VIEWS}/studies"):
        assert api.get(path).status_code == 401, path
        assert api.get(path, headers=bearer(tokens["bob"])).status_code == 200, path


@pytest.mark.parametrize("token", ["", "hpo_abc", "hpo_aaaaaaaa_" + "x" * 43, "Basic Zm9vOmJhcg=="])
def test_bad_keys_are_401(api, tokens, token):
    response = api.get(STUDIES, headers={"Authorization": f"Bearer {token}" if token else ""})

    assert response.status_code == 401


def test_a_key_with_the_right_id_but_wrong_secret_is_401(api, tokens):
    token_id = tokens["alice"].split("_")[1]

    assert api.get(STUDIES, headers=bearer(f"hpo_{token_id}_{'A' * 43}")).status_code == 401


def test_revoked_key_is_refused_and_the_last_revocation_does_not_reopen(api, settings, tokens):
    for record in keys.list_keys(settings.database_url):
        keys.revoke_key(settings.database_url, record.id)

    assert api.get(STUDIES, headers=bearer(tokens["alice"])).status_code == 401
    assert api.get(STUDIES).status_code == 401


def test_owners_see_only_their_studies(api, tokens):
    study = submit(api, tokens["alice"])
    sid = study["id"]
    assert study["owner"] == "alice"
    alice, bob, admin = (bearer(tokens[n]) for n in ("alice", "bob", "admin"))

    for method, path in [("GET", f"{STUDIES}/{sid}"), ("GET", f"{STUDIES}/{sid}/trials"),
                         ("GET", f"{STUDIES}/{sid}/best"), ("GET", f"{STUDIES}/{sid}/model"),
                         ("POST", f"{STUDIES}/{sid}/cancel"), ("POST", f"{STUDIES}/{sid}/resume"),
                         ("DELETE", f"{STUDIES}/{sid}"), ("GET", f"{VIEWS}/studies/{sid}"),
                         ("GET", f"{VIEWS}/studies/{sid}/trials")]:
        response = api.request(method, path, headers=bob)
        assert response.status_code == 404, (method, path, response.text)
        missing = api.request(method, path.replace(sid, "nosuchstdy"), headers=bob).json()
        assert response.json() == {"detail": [{**d, "message": d["message"].replace("nosuchstdy", sid)}
                                              for d in missing["detail"]]}  # as if it did not exist

    assert api.get(STUDIES, headers=bob).json()["total"] == 0
    assert api.get(STUDIES, params={"state": "queued"}, headers=bob).json()["total"] == 0
    assert api.get(f"{VIEWS}/studies", headers=bob).json()["items"] == []
    assert [s["id"] for s in api.get(STUDIES, headers=alice).json()["items"]] == [sid]
    assert [s["id"] for s in api.get(STUDIES, headers=admin).json()["items"]] == [sid]
    assert api.get(f"{STUDIES}/{sid}", headers=alice).status_code == 200
    assert api.post(f"{STUDIES}/{sid}/cancel", headers=admin).status_code == 200
    assert api.delete(f"{STUDIES}/{sid}", headers=alice).status_code == 204


def test_keys_of_one_name_share_their_studies(api, settings, tokens):
    study = submit(api, tokens["alice"])
    _, rotated = keys.create_key(settings.database_url, "alice")

    assert api.get(f"{STUDIES}/{study['id']}", headers=bearer(rotated)).status_code == 200


def test_owners_see_only_their_datasets(api, tokens):
    dataset = upload(api, tokens["alice"])
    did = dataset["id"]
    bob = bearer(tokens["bob"])
    assert dataset["owner"] == "alice"

    assert api.get(f"{DATASETS}/{did}", headers=bob).status_code == 404
    assert api.delete(f"{DATASETS}/{did}", headers=bob).status_code == 404
    assert api.get(DATASETS, headers=bob).json()["total"] == 0
    refused = api.post(STUDIES, json=tiny_spec(dataset={"id": did}, task="classification"), headers=bob)
    assert refused.status_code == 422 and "no uploaded dataset" in refused.text
    assert api.get(DATASETS, headers=bearer(tokens["admin"])).json()["total"] == 1
    submit(api, tokens["alice"], dataset={"id": did})


def test_a_dataset_used_by_an_admin_study_cannot_be_deleted_by_its_owner(api, tokens):
    did = upload(api, tokens["alice"])["id"]
    submit(api, tokens["admin"], dataset={"id": did})

    response = api.delete(f"{DATASETS}/{did}", headers=bearer(tokens["alice"]))

    assert response.status_code == 409, response.text


def test_the_dashboard_and_metrics_need_an_admin_key(api, tokens):
    study = submit(api, tokens["bob"])
    assert api.get("/dashboard", headers=bearer(tokens["bob"])).status_code == 403
    assert api.get("/api/meta", headers=bearer(tokens["bob"])).status_code == 403
    assert api.get("/api/meta", headers=bearer(tokens["admin"])).status_code == 200
    # /metrics counts every owner's studies: a non-admin key must not read it.
    assert api.get("/metrics").status_code == 401
    refused = api.get("/metrics", headers=bearer(tokens["bob"]))
    assert refused.status_code == 403 and "admin" in refused.json()["detail"][0]["message"]
    assert 'hpo_studies{state="queued"} 1' in api.get("/metrics", headers=bearer(tokens["admin"])).text
    # The study's dashboard link carries no internal Optuna id; it redirects admins only.
    link = f"/studies/{study['id']}/dashboard"
    assert api.get(f"{VIEWS}/studies/{study['id']}", headers=bearer(tokens["bob"])).json()["study"]["dashboard_url"] == link
    assert api.get(link, headers=bearer(tokens["bob"]), follow_redirects=False).status_code == 403
    assert api.get(link, headers=bearer(tokens["alice"]), follow_redirects=False).status_code == 404
    redirect = api.get(link, headers=bearer(tokens["admin"]), follow_redirects=False)
    assert redirect.status_code == 303 and redirect.headers["location"].startswith("/dashboard/studies/")


def test_browser_signs_in_with_a_cookie(api, tokens):
    page = api.get("/studies/abc", headers={"Accept": "text/html"}, follow_redirects=False)
    assert page.status_code == 303
    assert page.headers["location"] == "/login?next=%2Fstudies%2Fabc"

    wrong = api.post("/login", data={"key": "hpo_nope", "next": "/"}, follow_redirects=False)
    assert wrong.status_code == 401 and "not valid" in wrong.text

    signed_in = api.post("/login", data={"key": tokens["alice"], "next": "/studies/abc"}, follow_redirects=False)
    assert signed_in.status_code == 303 and signed_in.headers["location"] == "/studies/abc"
    cookie = signed_in.headers["set-cookie"]
    assert f"{COOKIE}=" in cookie and "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")

    assert api.get("/", headers={"Accept": "text/html"}).status_code == 200  # the client keeps the cookie
    assert api.post(STUDIES, json=tiny_spec()).json()["owner"] == "alice"

    api.post("/logout", follow_redirects=False)
    assert api.get(STUDIES).status_code == 401


@pytest.mark.parametrize("target", ["//evil.example/x", "https://evil.example", "\\\\evil", ""])
def test_login_never_redirects_off_site(api, tokens, target):
    response = api.post("/login", data={"key": tokens["alice"], "next": target}, follow_redirects=False)

    assert response.headers["location"] == "/"


def test_only_the_hash_is_stored(settings, api):
    record, token = keys.create_key(settings.database_url, "carol", admin=True)

    engine = make_engine(settings.database_url)
    with make_sessionmaker(engine)() as session:
        stored = session.scalars(select(ApiKeyRecord)).one()
    engine.dispose()
    assert token.startswith(f"hpo_{record.id}_") and len(token) > 50
    assert stored.key_hash == hashlib.sha256(token.encode()).hexdigest()
    assert token not in repr(keys.key_view(stored)) and stored.admin is True


def test_client_sends_its_key(live_server, settings):
    _, token = keys.create_key(settings.database_url, "dave")

    with Client(live_server.url, api_key=token) as client:
        assert client.submit(tiny_spec())["owner"] == "dave"
    with Client(live_server.url) as client, pytest.raises(APIError) as refused:
        client.studies()
    assert refused.value.status == 401


def test_keys_command(sqlite_url, capsys):
    hpo_main(["keys", "create", "--name", "erin", "--admin", "--database", sqlite_url])
    token = capsys.readouterr().out.strip()
    hpo_main(["keys", "list", "--database", sqlite_url])
    listed = capsys.readouterr().out
    key_id = token.split("_")[1]
    assert key_id in listed and token.split("_", 2)[2] not in listed and '"admin": true' in listed

    hpo_main(["keys", "revoke", key_id, "--database", sqlite_url])
    assert keys.list_keys(sqlite_url)[0].revoked_at is not None
    with pytest.raises(SystemExit) as bad_name:
        hpo_main(["keys", "create", "--name", "no spaces", "--database", sqlite_url])
    assert bad_name.value.code == 1 and "--name" in capsys.readouterr().err


def test_sign_in_page_is_on_the_pages_layout(api, tokens):
    """The sign-in page has every page's header and navigation (the one base template) and
    escapes the address it sends the browser back to."""
    studies_page = api.get("/", headers={"Accept": "text/html", **bearer(tokens["alice"])})
    sign_in = api.get("/login", params={"next": '/studies/"><script>alert(1)</script>'})
    header = re.compile(r"<header.*?</header>", re.S)

    assert studies_page.status_code == 200 and sign_in.status_code == 200
    assert header.search(sign_in.text).group(0) == header.search(studies_page.text).group(0)
    assert "<title>Sign in · hpo</title>" in sign_in.text
    assert "<script>alert(1)" not in sign_in.text and "&#34;&gt;&lt;script&gt;" in sign_in.text
