"""`ethml ipfs add|cat|serve`: content by CID, with no IPFS daemon."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from ethml.cli._common import echo_json, handle_errors
from ethml.errors import IpfsError

if TYPE_CHECKING:
    from ethml.ipfs import Blockstore

app = typer.Typer(
    help="Add, read and serve IPFS content without a daemon (verified blocks, local blockstore).",
    rich_markup_mode=None,
)

DataDir = Annotated[
    Path | None,
    typer.Option(
        help="Data directory; blocks live in DATA_DIR/blocks (default: XDG data dir/ethml).", envvar="ETHML_DATA_DIR"
    ),
]


def blockstore_for(data_dir: Path | None) -> Blockstore:
    from ethml.ipfs import Blockstore

    return Blockstore(data_dir / "blocks") if data_dir else Blockstore()


@app.command("add")
@handle_errors
def add(
    file: Annotated[Path, typer.Argument(help="File to add ('-' for standard input).", allow_dash=True)],
    cid_version: Annotated[int, typer.Option(min=0, max=1, help="0: dag-pb (Qm...); 1: raw leaves, base32.")] = 0,
    data_dir: DataDir = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print the CID and size as JSON.")] = False,
) -> None:
    """Store FILE in the local blockstore and print the CID that `ipfs add` prints with the same options."""
    from ethml.ipfs import IpfsClient

    if str(file) == "-":
        data = sys.stdin.buffer.read()
    else:
        try:
            data = file.read_bytes()
        except OSError as exc:
            raise IpfsError(f"cannot read {file}: {exc.strerror}") from None
    cid = IpfsClient(blockstore_for(data_dir)).add_bytes(data, cid_version)
    if json_output:
        echo_json({"cid": str(cid), "size": len(data)})
    else:
        typer.echo(str(cid))


@app.command("cat")
@handle_errors
def cat(
    cid: Annotated[str, typer.Argument(help="CIDv0 or CIDv1 (raw or dag-pb, sha2-256).")],
    gateway: Annotated[
        list[str] | None,
        typer.Option(
            metavar="URL", help="Trustless gateway base URL, tried in order (repeatable).", envvar="ETHML_GATEWAYS"
        ),
    ] = None,
    max_size: Annotated[int, typer.Option(help="Refuse content larger than this many bytes.")] = 64 * 1024 * 1024,
    timeout: Annotated[float, typer.Option(min=0.1, max=3600, help="Seconds allowed per gateway request.")] = 10.0,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write to this file instead of stdout.")] = None,
    data_dir: DataDir = None,
) -> None:
    """Print the content of CID: local blockstore first, then the gateways; every block is verified."""
    import asyncio

    from ethml.ipfs import IpfsClient, IpfsConfig

    async def run() -> bytes:
        config = IpfsConfig(gateways=gateway or [], max_size=max_size, gateway_timeout=timeout)
        async with IpfsClient(blockstore_for(data_dir), config) as client:
            return await client.cat(cid)

    data = asyncio.run(run())
    if output is not None:
        output.write_bytes(data)
    else:
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()


@app.command("serve")
@handle_errors
def serve(
    host: Annotated[
        str, typer.Option(help="Interface to listen on (0.0.0.0 for miners on other machines).", envvar="ETHML_HOST")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="TCP port.")] = 8080,
    data_dir: DataDir = None,
) -> None:
    """Serve the local blockstore as a read-only trustless gateway (GET /ipfs/CID?format=raw)."""
    import asyncio

    from aiohttp import web

    from ethml.ipfs import make_app

    store = blockstore_for(data_dir)

    async def run() -> None:
        runner = web.AppRunner(make_app(store))
        await runner.setup()
        try:
            site = web.TCPSite(runner, host, port)
            try:
                await site.start()  # binds here: a port in use fails before anything is announced
            except OSError as exc:
                raise IpfsError(f"cannot serve on {host}:{port}: {exc.strerror or exc}") from None
            typer.echo(f"serving {store.root} on http://{host}:{port}/ipfs/<cid>?format=raw (Ctrl-C stops)", err=True)
            await asyncio.Event().wait()
        finally:
            await runner.cleanup()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run())
