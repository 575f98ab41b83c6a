"""QuillStep on pyspark ``local[2]``: ``df.mapInArrow(step, step.spark_schema(df))``, through a
server that answers 5% of calls 503 (half of them after the handler ran), with partition 0
failing on its first attempt (``TaskContext.attemptNumber() == 0``) after its calls were made.
The output holds every row once and the server handled every key once. One Spark session
serves the module (it takes seconds to start)."""

from __future__ import annotations

import os
import shutil
import sys

import pyarrow as pa
import pytest

if shutil.which("java") is None:
    pytest.fail("pyspark needs Java: apt-get install openjdk-17-jre-headless (.ci/run does)", pytrace=False)
pyspark_sql = pytest.importorskip("pyspark.sql")

HERE = os.path.dirname(__file__)
sys.path.insert(0, HERE)
from pipeline_service import SERVICE, serving, spark_fail_first_attempt, texts_table  # noqa: E402

from quill.pipelines import QuillStep  # noqa: E402

pytestmark = pytest.mark.spark
SCORE = pa.struct([("length", pa.int64()), ("upper", pa.string())])
ROWS = 2000


@pytest.fixture(scope="module")
def spark():
    # the Python workers import pipeline_service (and this quill) as the driver does
    paths = [HERE, *os.environ.get("PYTHONPATH", "").split(os.pathsep)]
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    session = (pyspark_sql.SparkSession.builder.master("local[2,4]")  # 2 threads, 4 attempts per task
               .config("spark.ui.enabled", "false").config("spark.sql.shuffle.partitions", "2")
               .appName("quill-pipelines").getOrCreate())
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


def test_map_in_arrow_every_row_once_through_faults_and_a_failed_first_attempt(spark):
    with serving(fault_rate=0.05) as (service, url):
        step = QuillStep(url, SERVICE, "Score", input_column="text", request_field="text", output="struct",
                         output_type=SCORE, concurrency=16)
        table = texts_table(ROWS)
        df = spark.createDataFrame(list(zip(*table.to_pydict().values())), "text string, n long").repartition(4)
        schema = step.spark_schema(df)
        assert schema.fieldNames() == ["text", "n", "result", "error"]
        rows = df.mapInArrow(spark_fail_first_attempt(step), schema).collect()
        assert sorted(row.n for row in rows) == list(range(ROWS))
        assert all(row.error is None for row in rows)
        seven = next(row for row in rows if row.n == 7)
        assert seven.result.asDict() == {"length": len(f"row 7 of {ROWS}"), "upper": f"ROW 7 OF {ROWS}"}
        assert service.faults >= 40
        assert service.app.idempotency.replays >= ROWS // 4  # partition 0 again, answered from the store
        assert len(service.handled) == ROWS and not service.keys_handled_more_than_once()


def test_text_answers_and_the_error_column_in_spark(spark):
    with serving() as (service, url):
        step = QuillStep(url, SERVICE, "Generate", input_column="prompt", kind="tokens", request_field="prompt")
        df = spark.createDataFrame([("a b",), ("c",)], "prompt string")
        assert [tuple(r) for r in df.mapInArrow(step, step.spark_schema(df)).collect()] == [
            ("a b", "a b ", None), ("c", "c ", None)]
        missing = QuillStep(url, SERVICE, "Missing", input_column="prompt", kind="tokens", request_field="prompt")
        errors = [r.error for r in df.mapInArrow(missing, missing.spark_schema(df)).collect()]
        assert all(e.startswith("NotFoundError") for e in errors)
