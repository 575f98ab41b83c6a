"""QuillStep on a Dask LocalCluster of two process workers: ``ddf.map_partitions(step,
meta=step.meta(ddf))`` on pyarrow-backed frames, through a server that answers 5% of calls 503
(half of them after the handler ran), with a task that fails after its calls and is retried.
The output holds every row once and the server handled every key once."""

from __future__ import annotations

import os
import signal
import sys
import time

import pandas as pd
import pyarrow as pa
import pytest

dd = pytest.importorskip("dask.dataframe")
from dask import distributed  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
from pipeline_service import SERVICE, FailOnce, serving, texts_table  # noqa: E402

from quill.pipelines import QuillStep  # noqa: E402

pytestmark = pytest.mark.dask
SCORE = pa.struct([("length", pa.int64()), ("upper", pa.string())])
ROWS = 2000


@pytest.fixture(scope="module")
def dask_client():
    with distributed.LocalCluster(n_workers=2, threads_per_worker=2, processes=True,
                                  dashboard_address=None) as cluster, distributed.Client(cluster) as client:
        yield client


def frame(rows: int):
    table = texts_table(rows)
    return dd.from_pandas(table.to_pandas(types_mapper=pd.ArrowDtype), npartitions=8)


def test_map_partitions_every_row_once_through_faults_and_a_retried_task(dask_client, tmp_path):
    with serving(fault_rate=0.05) as (service, url):
        step = QuillStep(url, SERVICE, "Score", input_column="text", request_field="text", output="struct",
                         output_type=SCORE, concurrency=16)
        ddf = frame(ROWS)
        meta = step.meta(ddf)
        assert list(meta.columns) == ["text", "n", "result", "error"]
        assert meta.dtypes["result"] == pd.ArrowDtype(SCORE)
        flaky = FailOnce(step, str(tmp_path / "failed-once"))
        out = dask_client.compute(ddf.map_partitions(flaky, meta=meta), retries=2).result()
        assert (tmp_path / "failed-once").exists()  # a task did fail, and ran again
        assert sorted(out["n"].tolist()) == list(range(ROWS))
        assert out["error"].isna().all()
        got = {row.n: row.result for row in out.itertuples()}
        assert got[7] == {"length": len(f"row 7 of {ROWS}"), "upper": f"ROW 7 OF {ROWS}"}
        assert service.faults >= 40
        assert service.app.idempotency.replays >= ROWS // 8  # the retried task's calls, answered from the store
        assert len(service.handled) == ROWS and not service.keys_handled_more_than_once()


def test_a_worker_closed_mid_job_loses_no_row_and_repeats_no_call(dask_client):
    with serving(model_seconds=0.002) as (service, url):
        step = QuillStep(url, SERVICE, "Score", input_column="text", request_field="text", concurrency=8)
        ddf = frame(ROWS)
        future = dask_client.compute(ddf.map_partitions(step, meta=step.meta(ddf)))
        # once calls are flowing, close one worker: its tasks run again on the other
        import time

        deadline = time.monotonic() + 30
        while sum(service.handled.values()) < ROWS // 8 and time.monotonic() < deadline:
            time.sleep(0.01)
        pids = dask_client.run(os.getpid)
        os.kill(pids[sorted(pids)[0]], signal.SIGKILL)  # its nanny starts a new one
        out = future.result(timeout=120)
        assert service.app.idempotency.replays > 0  # the killed worker's calls, sent again and answered once
        assert sorted(out["n"].tolist()) == list(range(ROWS))
        assert out["error"].isna().all()
        assert len(service.handled) == ROWS and not service.keys_handled_more_than_once()
