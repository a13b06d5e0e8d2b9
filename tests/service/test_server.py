"""``service.server.serve`` refuses what would be unsafe before it starts anything."""

from __future__ import annotations

import pytest

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
