"""QuillStep on Ray Data (``ray.init(num_cpus=2)``): ``ds.map_batches(QuillStep,
fn_constructor_kwargs=..., batch_format="pyarrow", concurrency=2)``, through a server that answers
5% of calls 503 (half of them after the handler ran), with an actor process killed after the
calls of its batch reached the server. The output holds every row once and the server handled
every key once. One Ray instance serves the module (it takes seconds to start)."""

from __future__ import annotations

import os
import sys

import pyarrow as pa
import pytest

ray = pytest.importorskip("ray")
import ray.data  # noqa: E402

HERE = os.path.dirname(__file__)
sys.path.insert(0, HERE)
from pipeline_service import SERVICE, ray_dying_step, serving, texts_table  # noqa: E402

from quill.pipelines import QuillStep  # noqa: E402

pytestmark = pytest.mark.ray
SCORE = pa.struct([("length", pa.int64()), ("upper", pa.string())])
ROWS = 2000


@pytest.fixture(scope="module", autouse=True)
def ray_instance():
    paths = [HERE, *os.environ.get("PYTHONPATH", "").split(os.pathsep)]
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join(p for p in paths if p)}})
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield
    ray.shutdown()


def options(url):
    return dict(url=url, service=SERVICE, method="Score", input_column="text", request_field="text",
                output="struct", output_type=SCORE, concurrency=16)


def collect(ds) -> pa.Table:
    return pa.concat_tables(ray.get(ds.to_arrow_refs()))


def test_map_batches_every_row_once_through_faults_and_a_killed_actor(tmp_path):
    with serving(fault_rate=0.05) as (service, url):
        table = texts_table(ROWS)  # 8 blocks (a repartition here deadlocks 2 actors on 2 CPUs)
        ds = ray.data.from_arrow([table.slice(i, ROWS // 8) for i in range(0, ROWS, ROWS // 8)])
        out = collect(ds.map_batches(ray_dying_step(str(tmp_path / "died")), fn_constructor_kwargs=options(url),
                                     batch_format="pyarrow", batch_size=250, compute=ray.data.ActorPoolStrategy(size=2)))
        assert (tmp_path / "died").exists()  # an actor did die, and its batch ran again
        assert sorted(out.column("n").to_pylist()) == list(range(ROWS))
        assert out.column("error").null_count == ROWS
        assert out.schema.field("result").type == SCORE
        assert service.faults >= 40
        assert service.app.idempotency.replays >= 250  # the dead actor's batch, answered from the store
        assert len(service.handled) == ROWS and not service.keys_handled_more_than_once()


def test_map_batches_with_the_step_class_itself():
    with serving() as (service, url):
        ds = ray.data.from_arrow(texts_table(100))
        out = collect(ds.map_batches(QuillStep, fn_constructor_kwargs=options(url), batch_format="pyarrow",
                                     compute=ray.data.ActorPoolStrategy(size=1)))
        assert out.column("result").to_pylist()[:1] == [{"length": len("row 0 of 100"), "upper": "ROW 0 OF 100"}]
        assert sorted(out.column("n").to_pylist()) == list(range(100))
