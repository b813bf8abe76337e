"""`ethml model register|deactivate|list`: the model registry, directly or through the timelock."""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import typer

from ethml.cli._common import ChainOptions, JsonOption, echo_json, handle_errors
from ethml.cli._config import ConfigError
from ethml.cli._options import OptionGroup, option_groups
from ethml.cli._signer import SignerOptions

if TYPE_CHECKING:
    from web3 import AsyncWeb3
    from web3.contract import AsyncContract

    from ethml.chain.admin import AdminResult, Mode
    from ethml.chain.deploy import Deployment, ModelSpec

app = typer.Typer(rich_markup_mode=None)
model_app = typer.Typer(
    help=(
        "The model registry: `register` and `deactivate` (directly with the registry's admin key, or through "
        "the deployment's timelock: scheduled, then executed after its delay), `list`."
    ),
    no_args_is_help=True,
    rich_markup_mode=None,
)
app.add_typer(model_app, name="model")

ScheduleOption = Annotated[
    bool, typer.Option("--schedule", help="Through the timelock: only schedule (fails if already scheduled).")
]
ExecuteOption = Annotated[
    bool, typer.Option("--execute", help="Through the timelock: execute the operation scheduled earlier.")
]
CancelOption = Annotated[bool, typer.Option("--cancel", help="Through the timelock: cancel the scheduled operation.")]
SaltOption = Annotated[
    str | None,
    typer.Option(metavar="HEX", help="Timelock salt (32 bytes hex; default 0): tells apart two identical operations."),
]


@dataclasses.dataclass(frozen=True, kw_only=True)
class AdminOptions(OptionGroup):
    """What `model register` and `model deactivate` share: the timelock step, the admin's key, the chain
    and --json."""

    schedule: ScheduleOption = False
    execute: ExecuteOption = False
    cancel: CancelOption = False
    salt: SaltOption = None
    key: SignerOptions
    chain: ChainOptions
    json_output: JsonOption = False

    def run(self, body: Callable[[AsyncWeb3[Any], Deployment, Path], Awaitable[None]]) -> None:
        """Check that one timelock step at most is chosen, then run `body` on the chain's deployment."""
        _mode(self.schedule, self.execute, self.cancel)
        _with_deployment(self.chain, body)

    async def call(
        self, w3: AsyncWeb3[Any], dep: Deployment, what: str, make: Callable[[AsyncContract], Any]
    ) -> tuple[AsyncContract, AdminResult]:
        """The registry, and the registry call `make` builds made with its MODEL_ADMIN_ROLE: sent by the
        admin's key, or through the timelock."""
        from ethml.chain.admin import admin_call
        from ethml.chain.deploy import registry_contract

        signer = self.key.load(chain_id=dep.chain_id, purpose="the admin's key")[0]
        registry = registry_contract(w3, dep.registry)
        call = make(registry)
        mode = _mode(self.schedule, self.execute, self.cancel)
        result = await admin_call(
            w3, dep, signer, registry, "MODEL_ADMIN_ROLE", call, what, mode=mode, salt=_salt(self.salt)
        )
        return registry, result


@model_app.command("register")
@handle_errors
@option_groups
def register(
    manifest_entry: Annotated[
        str | None, typer.Option(metavar="NAME", help="Register this entry of the manifest (--models).")
    ] = None,
    models_dir: Annotated[
        Path | None,
        typer.Option(
            "--models", metavar="DIR", help="Manifest directory (default: bundled).", envvar="ETHML_MODELS_DIR"
        ),
    ] = None,
    cid: Annotated[
        str | None, typer.Option(help="IPFS CID of the model artifact (instead of --manifest-entry).")
    ] = None,
    sha256: Annotated[str | None, typer.Option(metavar="HEX", help="sha256 of the artifact (64 hex digits).")] = None,
    kind: Annotated[Literal["classification", "regression"] | None, typer.Option(help="The model's kind.")] = None,
    decimals: Annotated[
        int, typer.Option(min=0, max=18, help="Fixed-point decimals of a regression's prediction.")
    ] = 0,
    features: Annotated[int | None, typer.Option(min=1, max=65535, help="Features a data point has.")] = None,
    name: Annotated[
        str | None, typer.Option(help="Name recorded in the deployment file (default: the manifest entry's).")
    ] = None,
    *,
    admin: AdminOptions,
) -> None:
    """Register a model: sent at once by an account holding the registry's MODEL_ADMIN_ROLE; otherwise
    scheduled through the deployment's timelock, and registered by the same command with --execute once
    the delay has passed (the command says when)."""
    spec = _spec(manifest_entry, models_dir, cid, sha256, kind, decimals, features, name)

    async def body(w3: AsyncWeb3[Any], dep: Deployment, path: Path) -> None:
        from ethml.chain.deploy import model_id_from, register_call

        what = f"registering model {spec.name}"
        registry, result = await admin.call(w3, dep, what, lambda registry: register_call(registry, spec))
        model_id = None
        if result.action in ("sent", "executed") and result.receipt is not None:
            model_id = model_id_from(registry, result.receipt)
            dep.models[spec.name] = model_id
            dep.save(path)
        _tell(result, what, admin.json_output, {"model": spec.name, "model_id": model_id})
        if model_id is not None and not admin.json_output:
            typer.echo(f"model {spec.name} is model {model_id}; recorded in {path}")

    admin.run(body)


@model_app.command("deactivate")
@handle_errors
@option_groups
def deactivate(
    model_id: Annotated[int, typer.Argument(min=1, help="The model's id.")],
    *,
    admin: AdminOptions,
) -> None:
    """Deactivate a model (new requests for it are refused): directly with the registry's admin key, or
    through the timelock like `model register`."""

    async def body(w3: AsyncWeb3[Any], dep: Deployment, path: Path) -> None:
        what = f"deactivating model {model_id}"
        _, result = await admin.call(w3, dep, what, lambda registry: registry.functions.deactivateModel(model_id))
        _tell(result, what, admin.json_output, {"model_id": model_id})

    admin.run(body)


@model_app.command("list")
@handle_errors
@option_groups
def list_models(
    chain: ChainOptions,
    json_output: JsonOption = False,
) -> None:
    """Every model in the registry: id, name (from the deployment file), kind, features, active, CID."""

    async def body(w3: AsyncWeb3[Any], dep: Deployment, path: Path) -> None:
        from ethml.chain.deploy import ModelKind, registry_contract

        registry = registry_contract(w3, dep.registry)
        names = {i: n for n, i in dep.models.items()}
        rows = []
        for i in range(1, int(await registry.functions.modelCount().call()) + 1):
            sha, kind, decimals, count, active, model_cid = await registry.functions.getModel(i).call()
            rows.append(
                {
                    "id": i,
                    "name": names.get(i),
                    "kind": ModelKind(kind).name.lower(),
                    "decimals": decimals,
                    "features": count,
                    "active": active,
                    "cid": model_cid,
                    "sha256": bytes(sha).hex(),
                }
            )
        if json_output:
            echo_json(rows)
            return
        if not rows:
            typer.echo("no models registered")
        for r in rows:
            state = "active" if r["active"] else "inactive"
            shown = f"{r['id']:>4} {r['name'] or '-':<16} {r['kind']:<14} {r['features']:>5} features"
            typer.echo(f"{shown}  {state:<8} {r['cid']}")

    _with_deployment(chain, body)


# ---------------------------------------------------------------------- helpers


def _spec(
    entry: str | None,
    models_dir: Path | None,
    cid: str | None,
    sha256: str | None,
    kind: str | None,
    decimals: int,
    features: int | None,
    name: str | None,
) -> ModelSpec:
    from ethml.chain.deploy import ModelKind, ModelSpec
    from ethml.ipfs import parse_cid
    from ethml.ml import Manifest

    by_hand = {"--cid": cid, "--sha256": sha256, "--kind": kind, "--features": features}
    if entry is not None:
        if any(v is not None for v in by_hand.values()):
            raise ConfigError("--manifest-entry gives the model's fields: drop --cid, --sha256, --kind and --features")
        specs = {s.name: s for s in Manifest.load(models_dir).registry_specs()}
        if entry not in specs:
            raise ConfigError(f"the manifest has no model {entry!r} (it has {', '.join(sorted(specs))})")
        spec = specs[entry]
        return ModelSpec(
            name or spec.name, spec.cid, spec.artifact_sha256, spec.kind, spec.decimals, spec.feature_count
        )
    missing = [k for k, v in by_hand.items() if v is None]
    if missing:
        raise ConfigError(
            f"give --manifest-entry NAME, or all of --cid, --sha256, --kind, --features ({', '.join(missing)} missing)"
        )
    assert cid is not None and sha256 is not None and features is not None
    digest = sha256.lower().removeprefix("0x")
    if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise ConfigError(f"--sha256 {sha256!r} is not a sha256 digest (64 hex digits)")
    model_kind = ModelKind.CLASSIFICATION if kind == "classification" else ModelKind.REGRESSION
    if model_kind == ModelKind.CLASSIFICATION and decimals:
        raise ConfigError("a classification model has no --decimals")
    checked = str(parse_cid(cid))
    return ModelSpec(name or checked, checked, "0x" + digest, model_kind, decimals, features)


def _mode(schedule: bool, execute: bool, cancel: bool) -> Mode:
    chosen = [m for m, on in (("schedule", schedule), ("execute", execute), ("cancel", cancel)) if on]
    if len(chosen) > 1:
        raise ConfigError("--schedule, --execute and --cancel each choose the step: give one of them")
    return chosen[0] if chosen else "auto"  # type: ignore[return-value]


def _salt(text: str | None) -> bytes:
    if text is None:
        return bytes(32)
    digits = text.lower().removeprefix("0x")
    digits = "0" * (len(digits) % 2) + digits
    try:
        raw = bytes.fromhex(digits)
    except ValueError:
        raise ConfigError(f"--salt {text!r} is not hex") from None
    if len(raw) > 32:
        raise ConfigError(f"--salt {text!r} is longer than 32 bytes")
    return raw.rjust(32, b"\0")


def _with_deployment(chain: ChainOptions, body: Any) -> None:
    """`chain.run(body)`, with the deployment file's path as body's third argument (register records the
    new model's id in it)."""
    from ethml.chain.deploy import deployment_path

    async def with_path(w3: AsyncWeb3[Any], dep: Deployment) -> None:
        await body(w3, dep, chain.deployment or deployment_path(dep.chain_id, chain.data_dir))

    chain.run(with_path)


def _tell(result: AdminResult, what: str, json_output: bool, extra: dict[str, Any]) -> None:
    status = result.status
    if json_output:
        echo_json(
            {
                "action": result.action,
                "what": what,
                "timelock": result.timelock,
                "operation": result.operation,
                "ready_at": status.ready_at if status else None,
                "tx": "0x" + bytes(result.receipt["transactionHash"]).hex() if result.receipt else None,
                **extra,
            }
        )
        return
    tx = (
        f" (tx 0x{bytes(result.receipt['transactionHash']).hex()}, block {result.receipt['blockNumber']})"
        if result.receipt
        else ""
    )
    when = status.when() if status else ""
    op = result.operation
    lines = {
        "sent": f"done: {what}{tx}",
        "scheduled": (
            f"scheduled through the timelock {result.timelock}: {what}{tx}\n"
            f"operation {op}, executable from {when}\n"
            "then run the same command with --execute"
        ),
        "waiting": (
            f"{what} is scheduled (operation {op}); executable from {when}: then run the same command with --execute"
        ),
        "ready": f"{what} is scheduled and ready (operation {op}): run the same command with --execute",
        "executed": f"executed through the timelock: {what} (operation {op}){tx}",
        "cancelled": f"cancelled operation {op}: {what}{tx}",
        "done": f"{what} was executed through the timelock already (operation {op}); a deliberate repeat needs --salt",
    }
    typer.echo(lines[result.action])
