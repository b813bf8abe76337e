"""Deploy the ethml system to any AsyncWeb3 and remember where it went."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from enum import IntEnum
from pathlib import Path
from typing import Any

from eth_account.signers.local import LocalAccount
from web3 import AsyncWeb3
from web3.contract import AsyncContract

from ethml.chain._artifacts import load_artifact
from ethml.chain.accounts import dev_accounts

# Re-exported: the round helpers lived here before ethml.chain.rounds.
from ethml.chain.rounds import INVALID_INPUT as INVALID_INPUT
from ethml.chain.rounds import Status as Status
from ethml.chain.rounds import challenge_for as challenge_for
from ethml.chain.rounds import commitment_for as commitment_for
from ethml.chain.steps import StepRunner
from ethml.chain.tx import send
from ethml.errors import DeploymentError, DeploymentNotFound
from ethml.paths import data_home

EML = 10**18


class ModelKind(IntEnum):
    CLASSIFICATION = 0
    REGRESSION = 1


@dataclass(frozen=True)
class Parameters:
    """Mirrors `IEthML.Parameters` (hard caps are checked by the contract's RoundRules)."""

    base_reward: int = 1 * EML
    target_solve_time: int = 15
    min_difficulty: int = 1 << 16
    max_difficulty: int = 1 << 40
    #: Blocks after the opening block for five commitments (at most 240).
    expiry_blocks: int = 200
    #: Blocks after the fifth commitment for the reveals.
    reveal_blocks: int = 20
    #: A queued request older than this expires (refunded, called back).
    max_queue_blocks: int = 50_000
    max_callback_gas_limit: int = 1_000_000
    regression_tolerance_bps: int = 100
    #: Agreeing revealed votes needed for a result (3 or 4: at 5 one slot could veto any request).
    quorum: int = 3
    #: K: the most requests a round opens with (1 to 16).
    requests_per_round: int = 8
    #: EML each commitment bonds (at most 100 EML) ...
    miner_bond: int = 5 * EML
    #: ... plus this share of the round's tips, in basis points. Five base rewards and the whole tip make
    #: a miner that answers a model's majority class without running it lose money on models whose
    #: majority class is below 5/6 of the requests (docs/contracts.md, "The miner bond").
    bond_tip_bps: int = 10_000
    #: Priority fee (wei per gas) above the base fee at which callbacks are reimbursed to the closer.
    max_priority_fee: int = 2 * 10**9

    def as_tuple(self) -> tuple[int, ...]:
        return (
            self.base_reward,
            self.target_solve_time,
            self.min_difficulty,
            self.max_difficulty,
            self.expiry_blocks,
            self.reveal_blocks,
            self.max_queue_blocks,
            self.max_callback_gas_limit,
            self.regression_tolerance_bps,
            self.quorum,
            self.requests_per_round,
            self.miner_bond,
            self.bond_tip_bps,
            self.max_priority_fee,
        )


#: TrainingTasks.MIN_SLASH_BPS: the least slashBps setParameters accepts.
MIN_SLASH_BPS = 100


@dataclass(frozen=True)
class TrainingParameters:
    """Mirrors `TrainingBase.Parameters` (docs/training.md explains each). The defaults are for
    development: windows long enough for a slow, busy machine to take every step by hand, short enough
    to walk through a task in minutes; a public deployment sets days and hours."""

    min_trainer_stake: int = 100 * EML
    min_validator_stake: int = 100 * EML
    #: A submission's bond is `bond_bps` of the reward, but at least this.
    min_bond: int = 1 * EML
    #: An accepted model is registered only for tasks paying at least this.
    min_registration_reward: int = 10 * EML
    #: Seconds between asking to unstake and withdrawing: at least a day (TrainingBase.MIN_UNSTAKE_DELAY,
    #: longer than any draw looks back), at most 30 days.
    unstake_delay: int = 24 * 3600
    #: The shortest submit and score periods a task may ask for (seconds; hours on a public chain).
    min_period: int = 10
    #: Each reveal window (submissions, test set, scores), seconds.
    reveal_period: int = 60
    registration_period: int = 24 * 3600
    #: Scores are in millionths: 20,000 = 0.02.
    score_tolerance: int = 20_000
    claim_slack: int = 100_000
    #: Blocks between fixing a draw and the block whose hash draws it (65 or more on a public chain).
    draw_delay_blocks: int = 2
    validator_share_bps: int = 2_000
    slash_bps: int = 1_000
    no_show_bps: int = 200
    bond_bps: int = 1_000
    registrations_per_period: int = 24
    #: A task's validators' part must pay at least this per seat: reward x validator_share_bps / 10,000
    #: >= min_seat_reward x validations (a dust task cannot seat a panel and fine its no-shows).
    min_seat_reward: int = EML // 10
    #: The longest submit and score periods a task may ask for (seconds, at most 7 days), so one silent
    #: seat cannot lock every stake of a task for long.
    max_period: int = 7 * 24 * 3600

    def __post_init__(self) -> None:
        """The penalties TrainingTasks.setParameters insists on, refused here before any gas is spent."""
        if self.slash_bps < MIN_SLASH_BPS:
            raise DeploymentError(
                f"training slash_bps {self.slash_bps} is below TrainingTasks' minimum {MIN_SLASH_BPS} (1 %): "
                "every seat must put something at stake"
            )
        if self.no_show_bps == 0 or self.no_show_bps > self.slash_bps:
            raise DeploymentError(
                f"training no_show_bps must be 1..slash_bps ({self.slash_bps}), not {self.no_show_bps}"
            )
        if self.min_bond == 0:
            raise DeploymentError(
                "training min_bond must be above 0: a submission without a bond costs nothing to squat"
            )

    def as_tuple(self) -> tuple[int, ...]:
        return (
            self.min_trainer_stake,
            self.min_validator_stake,
            self.min_bond,
            self.min_registration_reward,
            self.unstake_delay,
            self.min_period,
            self.reveal_period,
            self.registration_period,
            self.score_tolerance,
            self.claim_slack,
            self.draw_delay_blocks,
            self.validator_share_bps,
            self.slash_bps,
            self.no_show_bps,
            self.bond_bps,
            self.registrations_per_period,
            self.min_seat_reward,
            self.max_period,
        )


@dataclass(frozen=True)
class ModelSpec:
    name: str
    cid: str
    artifact_sha256: str
    kind: ModelKind
    decimals: int
    feature_count: int


@dataclass
class Deployment:
    chain_id: int
    #: The oracle (EthML: requests, rounds, rewards).
    ethml: str
    #: The EML token (ERC-20 + EIP-2612).
    token: str
    #: The model registry.
    registry: str
    consumer: str
    deployer: str
    block: int
    models: dict[str, int] = field(default_factory=dict)
    #: The EthMLTimelock that holds the admin roles, for deployments made with a delay.
    timelock: str | None = None
    #: The TrainingTasks contract (holds the registry's registrar role to register accepted models).
    training: str | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Deployment:
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise DeploymentError(f"unreadable deployment file: {exc}") from exc
        if isinstance(data, dict) and "ethml" in data and not {"token", "registry"} <= data.keys():
            raise DeploymentError(
                "the deployment file is from an ethml before the token and the registry were contracts of their "
                "own (it names no token or registry address): deploy again (`ethml devnet`, or deploy_system)"
            )
        try:
            return cls(**data)
        except TypeError as exc:
            raise DeploymentError(f"unreadable deployment file: {exc}") from exc

    def save(self, path: Path) -> Path:
        """Write the file atomically: readers (`ethml mine` starting now) see the old one or the new one."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(self.to_json())
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: Path) -> Deployment:
        if not path.exists():
            raise DeploymentError(f"deployment file {path} does not exist")
        return cls.from_json(path.read_text())

    @classmethod
    def find(cls, chain_id: int, data_dir: Path | None = None) -> Deployment:
        path = deployment_path(chain_id, data_dir)
        if not path.exists():
            raise DeploymentNotFound(chain_id, str(path.parent))
        return cls.load(path)


def deployment_path(chain_id: int, data_dir: Path | None = None) -> Path:
    return (data_dir or data_home()) / "deployments" / f"{chain_id}.json"


def ethml_contract(w3: AsyncWeb3[Any], address: str) -> AsyncContract:
    """The oracle (its closing functions included: they run EthMLSettlement's code in its storage)."""
    return w3.eth.contract(address=w3.to_checksum_address(address), abi=load_artifact("EthML").abi)


def token_contract(w3: AsyncWeb3[Any], address: str) -> AsyncContract:
    return w3.eth.contract(address=w3.to_checksum_address(address), abi=load_artifact("EMLToken").abi)


def registry_contract(w3: AsyncWeb3[Any], address: str) -> AsyncContract:
    return w3.eth.contract(address=w3.to_checksum_address(address), abi=load_artifact("ModelRegistry").abi)


def consumer_contract(w3: AsyncWeb3[Any], address: str) -> AsyncContract:
    return w3.eth.contract(address=w3.to_checksum_address(address), abi=load_artifact("ExampleConsumer").abi)


def dev_holders(amount: int = 10_000 * EML) -> dict[str, int]:
    """The initial EML holders of a development deployment: the ten dev-mnemonic accounts."""
    return {a.address: amount for a in dev_accounts(10)}


#: Role hashes (OpenZeppelin's convention: keccak256 of the name; the default admin role is zero).
DEFAULT_ADMIN_ROLE = bytes(32)


def role(name: str) -> bytes:
    from eth_utils.crypto import keccak

    return DEFAULT_ADMIN_ROLE if name == "DEFAULT_ADMIN_ROLE" else bytes(keccak(text=name))


async def deploy_system(
    w3: AsyncWeb3[Any],
    deployer: LocalAccount,
    *,
    holders: dict[str, int] | None = None,
    parameters: Parameters | None = None,
    models: list[ModelSpec] | None = None,
    timelock_delay: int | None = None,
    training: TrainingParameters | None = None,
    runner: StepRunner | None = None,
) -> Deployment:
    """Deploy and wire the system: the EML token (minted to `holders`), the model registry, the oracle
    (EthML, which creates its RoundRules and EthMLSettlement), the token bound to the oracle, the
    example consumer, the `models` registered, and the training market (with the registry's registrar
    role).

    With `timelock_delay` (seconds), an EthMLTimelock in which the deployer proposes and executes takes
    every admin role (registry, oracle, training market) and the deployer renounces its own: every
    later parameter change or model registration waits that long. The models given here are
    registered before the roles are handed over.

    Each transaction is a named step of `runner` (ethml.chain.steps): give one with a journal on disk
    (`ethml deploy`) and a rerun after a crash or a lost transaction continues where it stopped, never
    deploying a contract twice. Without one the steps run in memory.
    """
    steps = runner or StepRunner(w3, deployer)
    if steps.account.address != deployer.address:
        raise DeploymentError("the step runner signs for another account than the deployer")
    if timelock_delay is not None and timelock_delay < 0:
        raise DeploymentError(f"the timelock delay must be 0 or more seconds, not {timelock_delay}")
    holders = dev_holders() if holders is None else holders
    params = parameters or Parameters()
    token = await steps.deploy("token", "EMLToken", list(holders), list(holders.values()), what="EMLToken (EML)")
    registry = await steps.deploy("registry", "ModelRegistry", deployer.address, what="ModelRegistry")
    ethml = await steps.deploy(
        "oracle", "EthML", token.contract, registry.contract, deployer.address, params.as_tuple(), what="EthML (oracle)"
    )
    await steps.transact(
        "token.bind",
        token_contract(w3, token.contract).functions.bindOracle(ethml.contract),
        "binding EML to the oracle",
    )
    consumer = await steps.deploy("consumer", "ExampleConsumer", ethml.contract, what="ExampleConsumer")
    deployment = Deployment(
        chain_id=await steps.chain_id(),
        ethml=ethml.contract,
        token=token.contract,
        registry=registry.contract,
        consumer=consumer.contract,
        deployer=deployer.address,
        block=token.block,
    )
    for spec in models or []:
        deployment.models[spec.name] = await _register_step(steps, deployment, spec)
    timelock: str | None = None
    if timelock_delay is not None:
        proposers = [deployer.address]
        timelock = (
            await steps.deploy("timelock", "EthMLTimelock", timelock_delay, proposers, proposers, what="EthMLTimelock")
        ).contract
    deployment.training = await _deploy_training(steps, deployment, training or TrainingParameters(), timelock)
    if timelock is not None:
        await _hand_admin_to_timelock(steps, deployment, timelock)
        deployment.timelock = timelock
    return deployment


async def _deploy_training(
    steps: StepRunner, deployment: Deployment, params: TrainingParameters, timelock: str | None
) -> str:
    """TrainingTasks beside the oracle, paid in the token, holding the registry's registrar role so
    accepted models get registered. Its code runs in two halves: TrainingValidation (the panel and the
    settlement) is deployed first, as a step of its own, and its address given to TrainingTasks'
    constructor, which checks that it was made for the same token and registry. Tasks are relayed on the
    requester's signed terms, so no relayer role is granted to anyone. With a `timelock`, the timelock
    takes TrainingTasks' admin and pauser roles and the deployer renounces them."""
    w3, deployer = steps.w3, steps.account.address
    validation = (
        await steps.deploy(
            "training.validation",
            "TrainingValidation",
            deployment.token,
            deployment.registry,
            what="TrainingValidation (the second half of TrainingTasks)",
        )
    ).contract
    address = (
        await steps.deploy(
            "training",
            "TrainingTasks",
            deployment.token,
            deployment.registry,
            deployer,
            params.as_tuple(),
            validation,
            what="TrainingTasks",
        )
    ).contract
    registry = registry_contract(w3, deployment.registry)
    await steps.transact(
        "training.registrar",
        registry.functions.grantRole(role("REGISTRAR_ROLE"), address),
        "granting TrainingTasks the registrar role",
    )
    tasks = training_contract(w3, address)
    if timelock is not None:
        admin_roles = ("DEFAULT_ADMIN_ROLE", "PAUSER_ROLE")
        for name in admin_roles:
            await steps.transact(
                f"training.grant.{name}",
                tasks.functions.grantRole(role(name), timelock),
                f"granting the timelock TrainingTasks' {name}",
            )
        for name in admin_roles:
            await steps.transact(
                f"training.renounce.{name}",
                tasks.functions.renounceRole(role(name), deployer),
                f"renouncing TrainingTasks' {name}",
            )
    return address


def training_contract(w3: AsyncWeb3[Any], address: str) -> AsyncContract:
    return w3.eth.contract(address=w3.to_checksum_address(address), abi=load_artifact("TrainingTasks").abi)


def timelock_contract(w3: AsyncWeb3[Any], address: str) -> AsyncContract:
    return w3.eth.contract(address=w3.to_checksum_address(address), abi=load_artifact("EthMLTimelock").abi)


#: The admin roles of the registry and the oracle that a timelock takes over: (contract, role name).
HANDED_OVER = (("registry", "MODEL_ADMIN_ROLE"), ("registry", "DEFAULT_ADMIN_ROLE"), ("oracle", "DEFAULT_ADMIN_ROLE"))


async def _hand_admin_to_timelock(steps: StepRunner, deployment: Deployment, timelock: str) -> None:
    """Grant the timelock every admin role of the registry and the oracle, then renounce the deployer's
    (grants first: a crash in between leaves both holding them, never neither)."""
    w3, deployer = steps.w3, steps.account.address
    contracts = {"registry": registry_contract(w3, deployment.registry), "oracle": ethml_contract(w3, deployment.ethml)}
    for where, name in HANDED_OVER:
        await steps.transact(
            f"handover.grant.{where}.{name}",
            contracts[where].functions.grantRole(role(name), timelock),
            f"granting the timelock the {where}'s {name}",
        )
    for where, name in HANDED_OVER:
        await steps.transact(
            f"handover.renounce.{where}.{name}",
            contracts[where].functions.renounceRole(role(name), deployer),
            f"renouncing the {where}'s {name}",
        )


async def _register_step(steps: StepRunner, deployment: Deployment, spec: ModelSpec) -> int:
    registry = registry_contract(steps.w3, deployment.registry)
    done = await steps.transact(f"model:{spec.name}", register_call(registry, spec), f"registering model {spec.name}")
    return model_id_from(registry, await steps.receipt(done))


def register_call(registry: AsyncContract, spec: ModelSpec) -> Any:
    return registry.functions.registerModel(
        spec.cid,
        bytes.fromhex(spec.artifact_sha256.removeprefix("0x")),
        int(spec.kind),
        spec.decimals,
        spec.feature_count,
    )


def model_id_from(registry: AsyncContract, receipt: Any) -> int:
    """The id of the model a transaction registered (its ModelRegistered event, wherever it came from)."""
    from web3.logs import DISCARD

    events = [
        e
        for e in registry.events.ModelRegistered().process_receipt(receipt, errors=DISCARD)
        if e["address"] == registry.address
    ]
    if not events:
        raise DeploymentError(f"transaction 0x{bytes(receipt['transactionHash']).hex()} registered no model")
    return int(events[0]["args"]["modelId"])


async def register_model(w3: AsyncWeb3[Any], admin: LocalAccount, deployment: Deployment, spec: ModelSpec) -> int:
    registry = registry_contract(w3, deployment.registry)
    receipt = await send(w3, admin, register_call(registry, spec), what=f"registering model {spec.name}")
    return model_id_from(registry, receipt)
