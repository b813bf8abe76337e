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
    #: Agreeing revealed votes needed for a result (3 to 5).
    quorum: int = 3
    #: K: the most requests a round opens with (1 to 16).
    requests_per_round: int = 8
    #: EML each commitment bonds (at most 100 EML) ...
    miner_bond: int = 2 * EML
    #: ... plus this share of the round's tips, in basis points (see docs/contracts.md for the sizing).
    bond_tip_bps: int = 5_000
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
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.to_json())
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


async def _deploy(w3: AsyncWeb3[Any], deployer: LocalAccount, name: str, *args: Any) -> str:
    artifact = load_artifact(name)
    factory: Any = w3.eth.contract(abi=artifact.abi, bytecode=artifact.bytecode)
    receipt = await send(w3, deployer, factory.constructor(*args), what=f"{name} deployment")
    address = receipt["contractAddress"]
    if address is None:
        raise DeploymentError(f"{name} deployment produced no contract address")
    return str(address)


async def deploy_system(
    w3: AsyncWeb3[Any],
    deployer: LocalAccount,
    *,
    holders: dict[str, int] | None = None,
    parameters: Parameters | None = None,
    models: list[ModelSpec] | None = None,
    timelock_delay: int | None = None,
    training: TrainingParameters | None = None,
) -> Deployment:
    """Deploy and wire the system: the EML token (minted to `holders`), the model registry, the oracle
    (EthML, which creates its RoundRules and EthMLSettlement), the token bound to the oracle, the
    example consumer, the `models` registered, and the training market (with the registry's registrar
    role).

    With `timelock_delay` (seconds), the admin roles of the registry and the oracle go to a new
    EthMLTimelock in which the deployer proposes and executes: every later parameter change or model
    registration waits that long. The models given here are registered before the roles are handed over.
    """
    holders = dev_holders() if holders is None else holders
    params = parameters or Parameters()
    token = await _deploy(w3, deployer, "EMLToken", list(holders), list(holders.values()))
    first_block = int(await w3.eth.block_number)
    registry = await _deploy(w3, deployer, "ModelRegistry", deployer.address)
    ethml = await _deploy(w3, deployer, "EthML", token, registry, deployer.address, params.as_tuple())
    await send(w3, deployer, token_contract(w3, token).functions.bindOracle(ethml), what="binding the token")
    consumer = await _deploy(w3, deployer, "ExampleConsumer", ethml)
    deployment = Deployment(
        chain_id=await w3.eth.chain_id,
        ethml=ethml,
        token=token,
        registry=registry,
        consumer=consumer,
        deployer=deployer.address,
        block=first_block,
    )
    for spec in models or []:
        deployment.models[spec.name] = await register_model(w3, deployer, deployment, spec)
    deployment.training = await _deploy_training(w3, deployer, deployment, training or TrainingParameters())
    if timelock_delay is not None:
        deployment.timelock = await _hand_admin_to_timelock(w3, deployer, deployment, timelock_delay)
    return deployment


async def _deploy_training(
    w3: AsyncWeb3[Any], deployer: LocalAccount, deployment: Deployment, params: TrainingParameters
) -> str:
    """TrainingTasks beside the oracle, paid in the token, holding the registry's registrar role so
    accepted models get registered. Its code runs in two halves: TrainingValidation (the panel and the
    settlement) is deployed first and its address given to TrainingTasks' constructor, which checks that
    it was made for the same token and registry. Tasks are relayed on the requester's signed terms, so no
    relayer role is granted to anyone."""
    validation = await _deploy(w3, deployer, "TrainingValidation", deployment.token, deployment.registry)
    address = await _deploy(
        w3,
        deployer,
        "TrainingTasks",
        deployment.token,
        deployment.registry,
        deployer.address,
        params.as_tuple(),
        validation,
    )
    registry = registry_contract(w3, deployment.registry)
    role = await registry.functions.REGISTRAR_ROLE().call()
    await send(
        w3, deployer, registry.functions.grantRole(role, address), what="granting TrainingTasks the registrar role"
    )
    return address


def training_contract(w3: AsyncWeb3[Any], address: str) -> AsyncContract:
    return w3.eth.contract(address=w3.to_checksum_address(address), abi=load_artifact("TrainingTasks").abi)


async def _hand_admin_to_timelock(
    w3: AsyncWeb3[Any], deployer: LocalAccount, deployment: Deployment, delay: int
) -> str:
    if delay < 0:
        raise DeploymentError(f"the timelock delay must be 0 or more seconds, not {delay}")
    timelock = await _deploy(w3, deployer, "EthMLTimelock", delay, [deployer.address], [deployer.address])
    registry = registry_contract(w3, deployment.registry)
    oracle = ethml_contract(w3, deployment.ethml)
    admin = bytes(32)
    roles = [(registry, await registry.functions.MODEL_ADMIN_ROLE().call()), (registry, admin), (oracle, admin)]
    if deployment.training is not None:
        training = training_contract(w3, deployment.training)
        roles += [(training, admin), (training, await training.functions.PAUSER_ROLE().call())]
    for contract, role in roles:
        await send(w3, deployer, contract.functions.grantRole(role, timelock), what="granting a role to the timelock")
    for contract, role in roles:
        await send(w3, deployer, contract.functions.renounceRole(role, deployer.address), what="renouncing a role")
    return timelock


async def register_model(w3: AsyncWeb3[Any], admin: LocalAccount, deployment: Deployment, spec: ModelSpec) -> int:
    registry = registry_contract(w3, deployment.registry)
    receipt = await send(
        w3,
        admin,
        registry.functions.registerModel(
            spec.cid,
            bytes.fromhex(spec.artifact_sha256.removeprefix("0x")),
            int(spec.kind),
            spec.decimals,
            spec.feature_count,
        ),
        what=f"registering model {spec.name}",
    )
    events = registry.events.ModelRegistered().process_receipt(receipt)
    return int(events[0]["args"]["modelId"])
