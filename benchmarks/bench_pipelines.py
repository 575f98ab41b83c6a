"""QuillStep and client.map against the glue people write by hand, on the same service in the same run.

The service (``app`` below, served by ``quill serve`` in a process of its own: uvicorn with
httptools and uvloop, one worker, the engine and configuration of quill's that spends the least
CPU per call) answers a JSON ``Score`` after its model time (asyncio.sleep).

- **one worker** (a service of ``--one-worker-ms``, 10 ms by default): the step on a pyarrow
  Table, ``QuillClient.map`` and ``AsyncQuillClient.map`` at concurrency 32 against the ideal
  (32 in flight / model time), and the hand-written ``ThreadPoolExecutor(32)`` over
  ``QuillClient.call_json`` as their peer, with the CPU time of the client (this process, every
  thread) and of the service per call. ``--pin`` pins the service to core 1 and this process to
  core 0 for this part, as a deployment with the client and the service on machines (cores) of
  their own would have them;
- **Ray Data** (a service of ``--model-ms``, 5 ms by default): ``map_batches(QuillStep, ...)`` on
  one actor against the usual pattern, a ``map_batches`` function that opens an aiohttp session
  per batch and posts JSON made with ``.tolist()``, one request per row, all at once; and
  against Ray's own HTTP request processor (``ray.data.llm.HttpRequestProcessorConfig``, one
  actor; it needs pydantic, which the ``bench`` extra installs);
- **Spark**: ``mapInArrow(step)`` against a ``pandas_udf`` that posts each row with ``requests``.

    python benchmarks/bench_pipelines.py --rows 100000 [--slow-rows 5000] [--pin] [--skip-ray] [--skip-spark]

The peers that call one row after another (Ray's processor, the pandas_udf) run ``--slow-rows``
rows (a rate in rows/s does not depend on the count once it is in the thousands); the others run
``--rows``. Rates are medians of ``--repeat`` runs after a warm-up run on 2,000 rows (the
engines' start is not timed, except Ray's actor start, which each run of a dataset repeats).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pandas as pd  # the pandas_udf's type hints name pd.Series (looked up in this module)
import pyarrow as pa

from quill.server import QuillApp

SERVICE = "bench.v1.Model"
MODEL_SECONDS = float(os.environ.get("BENCH_MODEL_MS", "5")) / 1000
CONCURRENCY = 32
WARM_UP_ROWS = 2000
app = QuillApp()


@app.unary(f"{SERVICE}/Score")
async def score(request, context):
    await asyncio.sleep(MODEL_SECONDS)
    text = json.loads(request)["text"]
    return json.dumps({"length": len(text)}).encode()


class Service:
    """``quill serve`` of this module's app with ``model_ms`` of model time, optionally pinned to ``core``."""

    def __init__(self, model_ms: float, core: int | None = None):
        pin = None if core is None else (lambda: os.sched_setaffinity(0, {core}))
        self.process = subprocess.Popen(
            [sys.executable, "-m", "quill", "serve", "bench_pipelines:app", "--app-dir", os.path.dirname(__file__),
             "--port", "0", "--log-level", "warning", "--max-connections", "4096"],
            stderr=subprocess.PIPE, text=True, env={**os.environ, "BENCH_MODEL_MS": str(model_ms)}, preexec_fn=pin)
        match = re.search(r" on (http://\S+)", self.process.stderr.readline())
        if not match:
            self.stop()
            raise RuntimeError("quill serve did not start")
        self.url = match.group(1)

    def cpu_seconds(self) -> float:
        with open(f"/proc/{self.process.pid}/stat") as stat:  # utime and stime, in clock ticks
            fields = stat.read().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait()


def own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def rows_table(n: int) -> pa.Table:
    return pa.table({"text": [f"row {i}" for i in range(n)], "n": list(range(n))})


def measure(run, rows: int, repeat: int, service: Service | None = None) -> dict:
    """Median rows/s of ``run(rows)`` (and, with ``service``, the median CPU µs per row of this
    process and of the service) over ``repeat`` runs after a warm-up."""
    run(min(rows, WARM_UP_ROWS))  # warm-up: connections, actors, the engine's own paths
    runs = []
    for _ in range(repeat):
        mine, theirs, started = own_cpu_seconds(), service.cpu_seconds() if service else 0.0, time.perf_counter()
        run(rows)
        wall = time.perf_counter() - started
        runs.append({"rate": rows / wall, "client_us": (own_cpu_seconds() - mine) / rows * 1e6,
                     "server_us": (service.cpu_seconds() - theirs) / rows * 1e6 if service else None})
    return {key: statistics.median(r[key] for r in runs) if runs[0][key] is not None else None for key in runs[0]}


def step_for(url: str):
    from quill.pipelines import QuillStep

    return QuillStep(url, SERVICE, "Score", input_column="text", request_field="text", concurrency=CONCURRENCY)


# -- one worker ---------------------------------------------------------------------------------
def one_worker(service: Service, rows: int, repeat: int) -> list[tuple[str, dict]]:
    from quill.client import AsyncQuillClient, QuillClient

    url = service.url
    table = rows_table(rows)
    texts = table["text"].to_pylist()
    step = step_for(url)
    client = QuillClient(url, max_connections=CONCURRENCY)

    def with_step(n):
        assert step(table.slice(0, n))["error"].null_count == n

    def with_map(n):
        requests = ({"text": t} for t in texts[:n])
        assert sum(1 for _ in client.map(SERVICE, "Score", requests, kind="json", concurrency=CONCURRENCY)) == n

    def with_async_map(n):
        async def main():
            async with AsyncQuillClient(url, max_connections=CONCURRENCY) as aclient:
                requests = ({"text": t} for t in texts[:n])
                return [a async for a in aclient.map(SERVICE, "Score", requests, kind="json", concurrency=CONCURRENCY)]

        assert len(asyncio.run(main())) == n

    def with_threads(n):  # the hand-written peer: 32 threads calling through the sync client
        with ThreadPoolExecutor(CONCURRENCY) as pool:
            assert len(list(pool.map(lambda t: client.call_json(SERVICE, "Score", {"text": t}), texts[:n]))) == n

    return [(f"QuillStep, one worker, concurrency {CONCURRENCY}", measure(with_step, rows, repeat, service)),
            (f"QuillClient.map, concurrency {CONCURRENCY}", measure(with_map, rows, repeat, service)),
            (f"AsyncQuillClient.map, concurrency {CONCURRENCY} (asyncio.run)",
             measure(with_async_map, rows, repeat, service)),
            (f"peer: ThreadPoolExecutor({CONCURRENCY}) over QuillClient.call_json",
             measure(with_threads, rows, repeat, service))]


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


def ray_http_processor(url: str):
    """Ray's HTTP request processor on one actor (None where ``ray.data.llm`` does not import: the reason)."""
    try:
        from ray.data.llm import HttpRequestProcessorConfig, build_processor
    except ImportError as exc:
        return None, f"ray.data.llm does not import: {exc}"
    config = HttpRequestProcessorConfig(url=f"{url}/{SERVICE}/Score", concurrency=1)
    return build_processor(config, preprocess=lambda row: {"payload": {"text": row["text"]}},
                           postprocess=lambda row: {"text": row["text"], "result": row["http_response"]}), None


def ray_rows(url: str, rows: int, slow_rows: int, repeat: int) -> list[tuple[str, dict | str]]:
    import ray

    from quill.pipelines import QuillStep

    paths = [os.path.dirname(__file__), *sys.path]
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join(p for p in paths if p)}})
    ray.data.DataContext.get_current().enable_progress_bars = False
    try:
        table = rows_table(max(rows, slow_rows))

        def blocks(n):
            return [table.slice(i, min(1000, n - i)) for i in range(0, n, 1000)]

        def with_step(n):
            ds = ray.data.from_arrow(blocks(n)).map_batches(
                QuillStep, batch_format="pyarrow", batch_size=1000, compute=ray.data.ActorPoolStrategy(size=1),
                fn_constructor_kwargs=dict(url=url, service=SERVICE, method="Score", input_column="text",
                                           request_field="text", concurrency=CONCURRENCY))
            assert ds.count() == n

        def with_aiohttp(n):
            ds = ray.data.from_arrow(blocks(n)).map_batches(aiohttp_batch(url), batch_format="pyarrow", batch_size=1000,
                                                            num_cpus=1, concurrency=1)
            assert ds.count() == n

        out: list = [("Ray Data: map_batches(QuillStep), 1 actor", measure(with_step, rows, repeat)),
                     ("Ray Data: aiohttp + JSON per batch, 1 task at a time", measure(with_aiohttp, rows, repeat))]
        processor, why = ray_http_processor(url)
        if processor is None:
            out.append(("Ray Data: ray.data.llm HttpRequestProcessorConfig, 1 actor", why))
        else:
            def with_processor(n):
                assert processor(ray.data.from_arrow(blocks(n))).count() == n

            out.append((f"Ray Data: ray.data.llm HttpRequestProcessorConfig, 1 actor ({slow_rows:,} rows)",
                        measure(with_processor, slow_rows, repeat)))
        return out
    finally:
        ray.shutdown()


# -- Spark --------------------------------------------------------------------------------------
def spark_rows(url: str, rows: int, slow_rows: int, repeat: int) -> list[tuple[str, dict]]:
    from pyspark.sql import SparkSession
    from pyspark.sql.functions import pandas_udf

    spark = SparkSession.builder.master("local[2]").config("spark.ui.enabled", "false").getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    try:
        frames = {}

        def frame(n):  # cached, two partitions
            if n not in frames:
                frames[n] = spark.createDataFrame([(f"row {i}", i) for i in range(n)], "text string, n long") \
                    .repartition(2).cache()
                frames[n].count()
            return frames[n]

        step = step_for(url)
        schema = step.spark_schema(frame(WARM_UP_ROWS))

        @pandas_udf("string")
        def post(texts: pd.Series) -> pd.Series:
            import requests

            with requests.Session() as session:
                return pd.Series([session.post(f"{url}/{SERVICE}/Score", json={"text": t}).text for t in texts])

        def with_step(n):
            assert frame(n).mapInArrow(step, schema).where("error is null").count() == n

        def with_udf(n):
            assert frame(n).select(post("text").alias("result")).where("result is not null").count() == n

        for n in (rows, slow_rows):
            frame(n)
        return [("Spark: mapInArrow(QuillStep), local[2]", measure(with_step, rows, repeat)),
                (f"Spark: pandas_udf posting with requests, local[2] ({slow_rows:,} rows)",
                 measure(with_udf, slow_rows, repeat))]
    finally:
        spark.stop()


def print_one_worker(rows: int, model_ms: float, pinned: bool, results: list, repeat: int) -> None:
    ideal = CONCURRENCY / (model_ms / 1000)
    peer = results[-1][1]
    print(f"One worker: {rows:,} rows, {model_ms:g} ms model time, ideal {ideal:,.0f} calls/s "
          f"({'client on core 0, service on core 1' if pinned else 'not pinned'}), medians of {repeat} runs, "
          f"load before {os.getloadavg()[0]:.1f}\n")
    print(f"| {'workload':<62} | {'rows/s':>7} | {'of ideal':>8} | {'client µs CPU/call':>18} | "
          f"{'service µs CPU/call':>19} | {'vs peer':>7} |")
    print(f"| {'-' * 62} | {'-' * 6}: | {'-' * 7}: | {'-' * 17}: | {'-' * 18}: | {'-' * 6}: |")
    for name, r in results:
        print(f"| {name:<62} | {r['rate']:>7,.0f} | {r['rate'] / ideal:>8.2f} | {r['client_us']:>18.0f} | "
              f"{r['server_us']:>19.0f} | {r['rate'] / peer['rate']:>6.2f}x |")
    print()


def print_engines(rows: int, model_ms: float, table: list, repeat: int) -> None:
    print(f"Engines: {rows:,} rows (unless the row says), {model_ms:g} ms model time, medians of {repeat} runs\n")
    print(f"| {'workload':<72} | {'rows/s':>7} | {'step / peer':>11} |")
    print(f"| {'-' * 72} | {'-' * 6}: | {'-' * 10}: |")
    for name, rate, ratio in table:
        shown = f"{rate:>7,.0f}" if isinstance(rate, float) else rate
        print(f"| {name:<72} | {shown:>7} | {ratio:>11} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--slow-rows", type=int, default=5_000, help="rows for the peers that call one row at a time")
    parser.add_argument("--model-ms", type=float, default=5.0, help="the service's model time for Ray and Spark")
    parser.add_argument("--one-worker-ms", type=float, default=10.0, help="the service's model time for one worker")
    parser.add_argument("--one-worker-rows", type=int, default=None, help="default: --rows")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--pin", action="store_true", help="one worker: this process on core 0, the service on core 1")
    for part in ("one-worker", "ray", "spark"):
        parser.add_argument(f"--skip-{part}", action="store_true")
    args = parser.parse_args()
    if not args.skip_one_worker:
        cores = os.sched_getaffinity(0)
        if args.pin:
            os.sched_setaffinity(0, {0})
        service = Service(args.one_worker_ms, 1 if args.pin else None)
        try:
            rows = args.one_worker_rows or args.rows
            print_one_worker(rows, args.one_worker_ms, args.pin, one_worker(service, rows, args.repeat), args.repeat)
        finally:
            service.stop()
            os.sched_setaffinity(0, cores)
    engines = [engine for skip, engine in ((args.skip_ray, ray_rows), (args.skip_spark, spark_rows)) if not skip]
    if not engines:
        return
    service = Service(args.model_ms)
    table = []
    try:
        for engine in engines:
            (step_name, step), *peers = engine(service.url, args.rows, args.slow_rows, args.repeat)
            ratios = [f"{step['rate'] / peer['rate']:.2f}x" if isinstance(peer, dict) else "" for _, peer in peers]
            table.append((step_name, step["rate"], ""))
            table += [(name, peer["rate"] if isinstance(peer, dict) else peer, ratio)
                      for (name, peer), ratio in zip(peers, ratios)]
    finally:
        service.stop()
    print_engines(args.rows, args.model_ms, table, args.repeat)


if __name__ == "__main__":
    main()
