"""What a service logs about its connection never holds the password or token of the URL."""

from __future__ import annotations

import pytest

from natsched.settings import ConnectionSettings


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("nats://svc:s3cret@127.0.0.1:4222", "nats://svc:***@127.0.0.1:4222 (credentials in the URL)"),
        ("nats://s3cret@h1:1,nats://h2:2", "nats://***@h1:1,nats://h2:2 (credentials in the URL)"),
        ("tls://svc:s3cret@h:4222", "tls://svc:***@h:4222 (credentials in the URL, TLS)"),
        ("nats://127.0.0.1:4222", "nats://127.0.0.1:4222 (no auth)"),
    ],
)
def test_describe_hides_credentials_in_the_url(url: str, shown: str) -> None:
    assert ConnectionSettings(url=url).describe() == shown
