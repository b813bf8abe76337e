"""Where training and validation jobs run, for every command that runs them (`ethml worker`,
`ethml train`, `ethml validate`): this machine or a Dask cluster, and the deployment's limits."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import TYPE_CHECKING, Annotated

import typer

from ethml.cli._options import OptionGroup

if TYPE_CHECKING:
    from ethml.training.cluster import ClusterInfo
    from ethml.training.jobs import Compute

DaskOption = Annotated[
    str | None,
    typer.Option(
        "--dask",
        metavar="ADDRESS",
        envvar="ETHML_DASK",
        help="Run the jobs' parallel parts (a forest's trees, the scoring of many submissions) on a Dask "
        "cluster: tcp://HOST:8786 (a `dask scheduler`), or local[:N] to start N single-threaded worker "
        "processes here. Same artifacts as without it. Needs ethml[dask].",
    ),
]
DaskTimeoutOption = Annotated[
    float,
    typer.Option(
        "--dask-timeout", min=0.5, envvar="ETHML_DASK_TIMEOUT", help="Seconds to wait for the Dask scheduler."
    ),
]
MaxRowsOption = Annotated[
    int,
    typer.Option("--max-rows", min=10, envvar="ETHML_MAX_ROWS", help="The most dataset rows a job accepts."),
]
MaxDatasetOption = Annotated[
    float,
    typer.Option(
        "--max-dataset-mb",
        min=0.001,
        max=1_048_576,
        envvar="ETHML_MAX_DATASET_MB",
        help="The largest dataset a job accepts, MiB (at most 1,048,576).",
    ),
]
MaxSecondsOption = Annotated[
    int,
    typer.Option(
        "--max-train-seconds",
        min=1,
        envvar="ETHML_MAX_TRAIN_SECONDS",
        help="The longest time limit a spec may ask for here (a spec asking more is refused).",
    ),
]
DEFAULT_MAX_ROWS = 100_000
DEFAULT_MAX_DATASET_MB = 16.0
DEFAULT_MAX_TRAIN_SECONDS = 600


@dataclasses.dataclass(frozen=True, kw_only=True)
class ComputeOptions(OptionGroup):
    """--dask, --dask-timeout and the limits a job is held to."""

    dask: DaskOption = None
    dask_timeout: DaskTimeoutOption = 10.0
    max_rows: MaxRowsOption = DEFAULT_MAX_ROWS
    max_dataset_mb: MaxDatasetOption = DEFAULT_MAX_DATASET_MB
    max_train_seconds: MaxSecondsOption = DEFAULT_MAX_TRAIN_SECONDS


@contextmanager
def compute_for(options: ComputeOptions) -> Iterator[tuple[Compute, ClusterInfo | None]]:
    """The Compute jobs get, and the cluster's size. With `--dask`: a LocalCluster started (and stopped
    on exit) for local[:N], then the scheduler checked: it answers, it has workers, they run this
    process's library versions. Each failure is a ClusterError here, at the start, not in a job."""
    from ethml.training.jobs import Compute
    from ethml.training.spec import TrainingLimits

    limits = TrainingLimits(
        max_rows=options.max_rows,
        max_dataset_bytes=round(options.max_dataset_mb * 1024 * 1024),
        max_train_seconds=options.max_train_seconds,
    )
    if options.dask is None:
        yield Compute(None, limits), None
        return
    from ethml.training.cluster import Cluster, LocalDaskCluster, cluster_info, connected, parse_target

    address, local = parse_target(options.dask)
    with ExitStack() as stack:
        if local is not None:
            typer.echo(f"starting a local Dask cluster of {local} worker processes", err=True)
            started = stack.enter_context(LocalDaskCluster(local))
            cluster = Cluster(started.address, options.dask_timeout)
        else:
            cluster = Cluster(str(address), options.dask_timeout)
        with connected(cluster):  # answers, has workers, runs our versions
            pass
        info = cluster_info(cluster)
        typer.echo(
            f"Dask cluster {cluster.address}: {info.workers} workers, {info.threads} threads, "
            f"{info.memory_bytes / 2**30:.1f} GiB",
            err=True,
        )
        yield Compute(cluster, limits), info
