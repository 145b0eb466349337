"""Spark for the analytics tests: one local session per test run, shared.

pyspark is the optional ``spark`` extra (``scripts/setup --dev`` installs it) and needs
Java 17. Outside CI the Spark tests skip without them; in CI (CI=true) they must run.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import need


def need_spark() -> None:
    """Skip (fail in CI) without pyspark or Java."""
    need(
        importlib.util.find_spec("pyspark") is not None,
        "Spark needs the optional extra: scripts/setup --dev (uv sync --extra spark)",
    )
    java = os.environ.get("JAVA_HOME")
    need(
        shutil.which("java") is not None or bool(java and os.path.isdir(java)),
        "Spark needs Java 17 (java on PATH or JAVA_HOME)",
    )


@pytest.fixture(scope="session")
def spark_session() -> Iterator[Any]:
    """A local Spark session (2 cores), stopped at the end of the run."""
    need_spark()
    from smartmed.analytics.spark import local_session

    session = local_session()
    yield session
    session.stop()
