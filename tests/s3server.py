"""A real S3-compatible server on loopback (moto) for the object-store tests, and the
environment that points mmsearch (boto3 and LanceDB) at it.

``tests/conftest.py`` registers this module, so every test can ask for ``s3``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

BUCKET = "mmsearch-test"


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """The endpoint URL of one moto server for the whole test session."""
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


def s3_env(endpoint: str) -> dict[str, str]:
    """The ``AWS_*`` variables that point boto3 and LanceDB at ``endpoint``."""
    return {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ALLOW_HTTP": "true",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": "us-east-1",
    }


@pytest.fixture
def s3(s3_server: str, tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """An empty bucket :data:`BUCKET` (a boto3 client on it), the environment set, and
    ``$MMSEARCH_CACHE`` at ``tmp_path/cache-writer``; the bucket is emptied afterwards."""
    import boto3

    env = {**s3_env(s3_server), "MMSEARCH_CACHE": str(tmp_path / "cache-writer")}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    client = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1")
    client.create_bucket(Bucket=BUCKET)
    yield client
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET)
    for page in pages:
        for obj in page.get("Contents", []):
            client.delete_object(Bucket=BUCKET, Key=obj["Key"])
    client.delete_bucket(Bucket=BUCKET)


def keys(client: Any, prefix: str) -> list[str]:
    """The keys under ``prefix`` in :data:`BUCKET`."""
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return [o["Key"] for page in pages for o in page.get("Contents", [])]
