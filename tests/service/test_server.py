"""``service.server.serve`` refuses what would be unsafe before it starts anything."""

from __future__ import annotations

import pytest

from service import keys, server
from service.server import is_loopback, serve


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.10", "::", "example.com"])
def test_no_public_address_without_insecure(host, tmp_path):
    with pytest.raises(ValueError, match="--insecure"):
        serve(host=host, port=0, database_url=f"sqlite:///{tmp_path / 'x.db'}", workers=0)
    assert not (tmp_path / "x.db").exists()  # refused before touching anything


def test_negative_workers_are_refused(tmp_path):
    with pytest.raises(ValueError, match="workers"):
        serve(database_url=f"sqlite:///{tmp_path / 'x.db'}", workers=-1)


@pytest.mark.parametrize(("host", "expected"), [("127.0.0.1", True), ("localhost", True), ("::1", True),
                                                ("0.0.0.0", False), ("10.0.0.1", False)])
def test_is_loopback(host, expected):
    assert is_loopback(host) is expected


def test_a_public_address_is_served_once_a_key_exists(tmp_path, monkeypatch):
    url = f"sqlite:///{tmp_path / 'x.db'}"
    keys.create_key(url, "ops", admin=True)
    served = []
    monkeypatch.setattr(server.uvicorn, "run", lambda app, **kwargs: served.append(kwargs["host"]))

    serve(host="0.0.0.0", port=0, database_url=url, workers=0)

    assert served == ["0.0.0.0"]


def test_revoked_keys_do_not_count(tmp_path):
    url = f"sqlite:///{tmp_path / 'x.db'}"
    record, _ = keys.create_key(url, "ops")
    keys.revoke_key(url, record.id)

    with pytest.raises(ValueError, match="without API keys"):
        serve(host="0.0.0.0", port=0, database_url=url, workers=0)
