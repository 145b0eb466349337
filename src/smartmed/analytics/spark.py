"""Spark SQL execution (the optional ``spark`` extra: ``uv sync --extra spark``; needs Java).

Resources sit in a temporary view ``fhir_resource(type STRING, content STRING)``, read
from NDJSON files (Bulk Data layout) or Python dicts; the compiled view is plain Spark
SQL. Local mode (``local[N]``) is what the tests and the CLI use.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from smartmed.analytics.query import CompiledView

if TYPE_CHECKING:  # pyspark is optional
    from pyspark.sql import SparkSession

VIEW = "fhir_resource"


def spark_source(resource_type: str) -> str:
    """The FROM item of one type's resources in the Spark temporary view."""
    quoted = resource_type.replace("'", "\\'")
    return f"(SELECT content FROM {VIEW} WHERE type = '{quoted}')"


def local_session(cores: int = 2) -> SparkSession:
    """A local Spark session, quiet (no UI, few shuffle partitions)."""
    from pyspark.sql import SparkSession

    session = (
        SparkSession.builder.master(f"local[{cores}]")
        .appName("smartmed-views")
        .config("spark.ui.enabled", "false")
        .config("spark.sql.shuffle.partitions", str(cores))
        .config("spark.sql.session.timeZone", "UTC")
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("ERROR")
    return session


def load_ndjson(spark: SparkSession, paths: Iterable[Path]) -> None:
    """Make the NDJSON files (one resource per line) the resource view."""
    files = [str(p) for p in paths]
    lines = spark.read.text(files) if files else spark.createDataFrame([], "value STRING")
    lines.createOrReplaceTempView("fhir_lines")
    spark.sql(
        f"CREATE OR REPLACE TEMPORARY VIEW {VIEW} AS SELECT "
        "get_json_object(value, '$.resourceType') AS type, value AS content FROM fhir_lines "
        "WHERE trim(value) <> ''"
    )


def load_resources(spark: SparkSession, resources: Iterable[dict[str, Any]]) -> None:
    """Make the given resources (dicts) the resource view."""
    rows = [(r.get("resourceType"), orjson.dumps(r).decode()) for r in resources]
    frame = spark.createDataFrame(rows, "type STRING, content STRING")
    frame.createOrReplaceTempView(VIEW)


def run_spark(spark: SparkSession, compiled: CompiledView) -> list[tuple[Any, ...]]:
    """Execute a compiled view; rows as tuples in column order."""
    return [tuple(row) for row in spark.sql(compiled.sql).collect()]
