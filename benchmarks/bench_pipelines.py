"""QuillStep against the glue people write by hand, on the same service in the same run.

The service (``app`` below, served by ``quill serve`` in a process of its own) answers a JSON
``Score`` after ``--model-ms`` of model time (asyncio.sleep: the server is not the bottleneck).

- **one worker**: the step on a pyarrow Table and ``QuillClient.map`` at concurrency 32, against
  the ideal concurrency / model time;
- **Ray Data**: ``map_batches(QuillStep, ...)`` on one actor against the usual pattern, a
  ``map_batches`` function that opens an aiohttp session per batch and posts JSON made with
  ``.tolist()``, one request per row, all at once;
- **Spark**: ``mapInArrow(step)`` against a ``pandas_udf`` that posts each row with ``requests``.

    python benchmarks/bench_pipelines.py --rows 20000 --model-ms 5 [--skip-ray] [--skip-spark]

Rows/s are medians of ``--repeat`` runs after a warm-up run (the engines' start is not timed).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import time

import pandas as pd  # the pandas_udf's type hints name pd.Series (looked up in this module)
import pyarrow as pa

from quill.server import QuillApp

SERVICE = "bench.v1.Model"
MODEL_SECONDS = float(os.environ.get("BENCH_MODEL_MS", "5")) / 1000
app = QuillApp()


@app.unary(f"{SERVICE}/Score")
async def score(request, context):
    await asyncio.sleep(MODEL_SECONDS)
    text = json.loads(request)["text"]
    return json.dumps({"length": len(text)}).encode()


def serve(model_ms: float):
    process = subprocess.Popen(
        [sys.executable, "-m", "quill", "serve", "bench_pipelines:app", "--app-dir", os.path.dirname(__file__),
         "--port", "0", "--log-level", "warning", "--max-connections", "4096"],
        stderr=subprocess.PIPE, text=True, env={**os.environ, "BENCH_MODEL_MS": str(model_ms)})
    match = re.search(r" on (http://\S+)", process.stderr.readline())
    assert match, "quill serve did not start"
    return process, match.group(1)


def rows_table(n: int) -> pa.Table:
    return pa.table({"text": [f"row {i}" for i in range(n)], "n": list(range(n))})


def measure(run, rows: int, repeat: int) -> float:
    run()  # warm-up: connections, actors, JIT of the engine's own paths
    rates = []
    for _ in range(repeat):
        started = time.perf_counter()
        run()
        rates.append(rows / (time.perf_counter() - started))
    return statistics.median(rates)


def step_for(url: str, concurrency: int = 32):
    from quill.pipelines import QuillStep

    return QuillStep(url, SERVICE, "Score", input_column="text", request_field="text", concurrency=concurrency)


# -- one worker ---------------------------------------------------------------------------------
def one_worker(url: str, rows: int, repeat: int) -> list[tuple[str, float]]:
    from quill.client import QuillClient

    table = rows_table(rows)
    step = step_for(url)

    def with_step():
        out = step(table)
        assert out["error"].null_count == rows

    client = QuillClient(url, max_connections=32)
    requests = [{"text": t} for t in table["text"].to_pylist()]

    def with_map():
        assert sum(1 for _ in client.map(SERVICE, "Score", requests, kind="json", concurrency=32)) == rows

    return [("QuillStep, one worker, concurrency 32", measure(with_step, rows, repeat)),
            ("QuillClient.map, concurrency 32", measure(with_map, rows, repeat))]


# -- Ray Data -----------------------------------------------------------------------------------
def aiohttp_batch(url: str):
    """The pattern Ray users write: a session per batch, JSON from ``.tolist()``, all rows at once."""

    def call(batch: pa.Table) -> pa.Table:
        import aiohttp

        async def main():
            async with aiohttp.ClientSession() as session:
                async def one(text):
                    async with session.post(f"{url}/{SERVICE}/Score", json={"text": text}) as answer:
                        return await answer.text()
                return await asyncio.gather(*(one(t) for t in batch["text"].to_numpy(zero_copy_only=False).tolist()))

        return batch.append_column("result", pa.array(asyncio.run(main())))

    return call


def ray_rows(url: str, rows: int, repeat: int) -> list[tuple[str, float]]:
    import ray

    from quill.pipelines import QuillStep

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    try:
        table = rows_table(rows)
        blocks = [table.slice(i, 1000) for i in range(0, rows, 1000)]

        def with_step():
            ds = ray.data.from_arrow(blocks).map_batches(
                QuillStep, batch_format="pyarrow", batch_size=1000, compute=ray.data.ActorPoolStrategy(size=1),
                fn_constructor_kwargs=dict(url=url, service=SERVICE, method="Score", input_column="text",
                                           request_field="text", concurrency=32))
            assert ds.count() == rows

        def with_aiohttp():
            ds = ray.data.from_arrow(blocks).map_batches(aiohttp_batch(url), batch_format="pyarrow", batch_size=1000,
                                                         num_cpus=1, concurrency=1)
            assert ds.count() == rows

        return [("Ray Data: map_batches(QuillStep), 1 actor", measure(with_step, rows, repeat)),
                ("Ray Data: aiohttp + JSON per batch, 1 task at a time", measure(with_aiohttp, rows, repeat))]
    finally:
        ray.shutdown()


# -- Spark --------------------------------------------------------------------------------------
def spark_rows(url: str, rows: int, repeat: int) -> list[tuple[str, float]]:
    from pyspark.sql import SparkSession
    from pyspark.sql.functions import pandas_udf

    spark = SparkSession.builder.master("local[2]").config("spark.ui.enabled", "false").getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    try:
        df = spark.createDataFrame([(f"row {i}", i) for i in range(rows)], "text string, n long").repartition(2)
        df.cache().count()
        step = step_for(url)
        schema = step.spark_schema(df)

        @pandas_udf("string")
        def post(texts: pd.Series) -> pd.Series:
            import requests

            with requests.Session() as session:
                return pd.Series([session.post(f"{url}/{SERVICE}/Score", json={"text": t}).text for t in texts])

        def with_step():
            assert df.mapInArrow(step, schema).where("error is null").count() == rows

        def with_udf():
            assert df.select(post("text").alias("result")).where("result is not null").count() == rows

        return [("Spark: mapInArrow(QuillStep), local[2]", measure(with_step, rows, repeat)),
                ("Spark: pandas_udf posting with requests, local[2]", measure(with_udf, rows, repeat))]
    finally:
        spark.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--model-ms", type=float, default=5.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--skip-ray", action="store_true")
    parser.add_argument("--skip-spark", action="store_true")
    args = parser.parse_args()
    process, url = serve(args.model_ms)
    try:
        ideal = 32 / (args.model_ms / 1000)
        table = [("ideal: 32 in flight / model time", ideal, None)]
        table += [(name, rate, None) for name, rate in one_worker(url, args.rows, args.repeat)]
        for skip, engine in ((args.skip_ray, ray_rows), (args.skip_spark, spark_rows)):
            if not skip:
                (step_name, step_rate), (peer_name, peer_rate) = engine(url, args.rows, args.repeat)
                table += [(step_name, step_rate, step_rate / peer_rate), (peer_name, peer_rate, None)]
    finally:
        process.terminate()
        process.wait()
    print(f"{args.rows} rows, {args.model_ms:g} ms model time, medians of {args.repeat} runs\n")
    print(f"| {'workload':<55} | {'rows/s':>9} | {'of ideal':>8} | {'step / peer':>11} |")
    print(f"| {'-' * 55} | {'-' * 9}: | {'-' * 8}: | {'-' * 11}: |")
    for name, rate, ratio in table:
        print(f"| {name:<55} | {rate:>9,.0f} | {rate / ideal:>8.2f} | {'' if ratio is None else f'{ratio:.2f}x':>11} |")


if __name__ == "__main__":
    main()
