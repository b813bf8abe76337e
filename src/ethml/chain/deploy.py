"""Deploy the ethml system to any AsyncWeb3 and remember where it went."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from enum import IntEnum
from pathlib import Path
from typing import Any

from eth_abi.abi import encode as abi_encode
from eth_account.signers.local import LocalAccount
from eth_utils.crypto import keccak
from web3 import AsyncWeb3
from web3.contract import AsyncContract

from ethml.chain._artifacts import load_artifact
from ethml.chain.accounts import dev_accounts
from ethml.chain.tx import send
from ethml.errors import DeploymentError, DeploymentNotFound
from ethml.paths import data_home

EML = 10**18


class ModelKind(IntEnum):
    CLASSIFICATION = 0
    REGRESSION = 1


class Status(IntEnum):
    NONE = 0
    QUEUED = 1
    CURRENT = 2
    FINALIZED = 3
    INVALID_INPUT = 4
    EXPIRED = 5
    NO_CONSENSUS = 6
    CANCELLED = 7

    @property
    def closed(self) -> bool:
        return self >= Status.FINALIZED

    @property
    def label(self) -> str:
        return self.name.lower().replace("_", " ")


#: The value a miner reveals when the data point cannot be used (the contract's INVALID_INPUT).
INVALID_INPUT = -(2**255)


def challenge_for(block_hash: bytes, contract: str, request_id: int) -> bytes:
    """A round's challenge: keccak256(abi.encodePacked(blockhash(openBlock), contract, requestId))."""
    return keccak(bytes(block_hash) + bytes.fromhex(contract.removeprefix("0x")) + request_id.to_bytes(32, "big"))


def commitment_for(request_id: int, miner: str, prediction: int, salt: bytes) -> bytes:
    """keccak256(abi.encode(requestId, miner, prediction, salt)), what `commit` takes."""
    return keccak(abi_encode(["uint256", "address", "int256", "bytes32"], [request_id, miner, prediction, salt]))


@dataclass(frozen=True)
class Parameters:
    """Mirrors `EthML.Parameters` (hard caps are checked by the contract's RoundRules)."""

    base_reward: int = 1 * EML
    target_solve_time: int = 15
    min_difficulty: int = 1 << 16
    max_difficulty: int = 1 << 40
    #: Blocks after the opening block for five commitments (at most 240).
    expiry_blocks: int = 200
    #: Blocks after the fifth commitment for the reveals.
    reveal_blocks: int = 20
    #: A queued request older than this expires (refunded) when it would be opened.
    max_queue_blocks: int = 50_000
    max_callback_gas_limit: int = 1_000_000
    regression_tolerance_bps: int = 100
    #: Agreeing revealed votes needed for a result (3 to 5).
    quorum: int = 3

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
        )


@dataclass(frozen=True)
class TrainingParameters:
    """Mirrors `TrainingBase.Parameters` (docs/training.md explains each; development defaults)."""

    min_trainer_stake: int = 100 * EML
    min_validator_stake: int = 100 * EML
    #: A submission's bond is `bond_bps` of the reward, but at least this.
    min_bond: int = 1 * EML
    #: An accepted model is registered only for tasks paying at least this.
    min_registration_reward: int = 10 * EML
    unstake_delay: int = 7 * 24 * 3600
    #: The shortest submit and score periods a task may ask for (seconds).
    min_period: int = 10
    #: Each reveal window (submissions, test set, scores), seconds.
    reveal_period: int = 300
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
    ethml: str
    consumer: str
    deployer: str
    block: int
    models: dict[str, int] = field(default_factory=dict)
    #: The EthMLTimelock that holds the admin roles, for deployments made with a delay.
    timelock: str | None = None
    #: The TrainingTasks contract (holds EthML's model-admin role to register accepted models).
    training: str | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Deployment:
        try:
            data = json.loads(text)
            return cls(**data)
        except (ValueError, TypeError) as exc:
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
    return w3.eth.contract(address=w3.to_checksum_address(address), abi=load_artifact("EthML").abi)


def consumer_contract(w3: AsyncWeb3[Any], address: str) -> AsyncContract:
    return w3.eth.contract(address=w3.to_checksum_address(address), abi=load_artifact("ExampleConsumer").abi)


def dev_holders(amount: int = 10_000 * EML) -> dict[str, int]:
    """The initial EML holders of a development deployment: the ten dev-mnemonic accounts."""
    return {a.address: amount for a in dev_accounts(10)}


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
    """Deploy EthML (token holders, parameters), the example consumer, and register `models`.

    With `timelock_delay` (seconds), the admin roles go to a new EthMLTimelock in which the deployer
    proposes and executes: every later parameter change or model registration waits that long. The
    models given here are registered before the roles are handed over.
    """
    holders = dev_holders() if holders is None else holders
    params = parameters or Parameters()
    artifact = load_artifact("EthML")
    factory: Any = w3.eth.contract(abi=artifact.abi, bytecode=artifact.bytecode)
    receipt = await send(
        w3,
        deployer,
        factory.constructor(deployer.address, list(holders), list(holders.values()), params.as_tuple()),
        what="EthML deployment",
    )
    ethml_address = receipt["contractAddress"]
    if ethml_address is None:
        raise DeploymentError("EthML deployment produced no contract address")
    consumer_artifact = load_artifact("ExampleConsumer")
    consumer_factory: Any = w3.eth.contract(abi=consumer_artifact.abi, bytecode=consumer_artifact.bytecode)
    consumer_receipt = await send(
        w3, deployer, consumer_factory.constructor(ethml_address), what="ExampleConsumer deployment"
    )
    deployment = Deployment(
        chain_id=await w3.eth.chain_id,
        ethml=str(ethml_address),
        consumer=str(consumer_receipt["contractAddress"]),
        deployer=deployer.address,
        block=int(receipt["blockNumber"]),
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
    """TrainingTasks beside EthML, holding EthML's model-admin role so accepted models get registered.

    Interim, until the oracle's split deployment (EMLToken, ModelRegistry) lands: EthML is passed as
    both the token and the registry. TrainingTasks checks a task's model shape with
    `ModelRegistry.checkModel`, which EthML lacks, so tasks cannot be created on this deployment yet.
    """
    artifact = load_artifact("TrainingTasks")
    factory: Any = w3.eth.contract(abi=artifact.abi, bytecode=artifact.bytecode)
    receipt = await send(
        w3,
        deployer,
        factory.constructor(deployment.ethml, deployment.ethml, deployer.address, params.as_tuple()),
        what="TrainingTasks deployment",
    )
    address = str(receipt["contractAddress"])
    contract = ethml_contract(w3, deployment.ethml)
    role = await contract.functions.MODEL_ADMIN_ROLE().call()
    await send(w3, deployer, contract.functions.grantRole(role, address), what="granting TrainingTasks the model role")
    return address


def training_contract(w3: AsyncWeb3[Any], address: str) -> AsyncContract:
    return w3.eth.contract(address=w3.to_checksum_address(address), abi=load_artifact("TrainingTasks").abi)


async def _hand_admin_to_timelock(
    w3: AsyncWeb3[Any], deployer: LocalAccount, deployment: Deployment, delay: int
) -> str:
    if delay < 0:
        raise DeploymentError(f"the timelock delay must be 0 or more seconds, not {delay}")
    artifact = load_artifact("EthMLTimelock")
    factory: Any = w3.eth.contract(abi=artifact.abi, bytecode=artifact.bytecode)
    receipt = await send(
        w3, deployer, factory.constructor(delay, [deployer.address], [deployer.address]), what="timelock deployment"
    )
    timelock = str(receipt["contractAddress"])
    contract = ethml_contract(w3, deployment.ethml)
    for role in (await contract.functions.MODEL_ADMIN_ROLE().call(), bytes(32)):
        await send(w3, deployer, contract.functions.grantRole(role, timelock), what="granting a role to the timelock")
    for role in (await contract.functions.MODEL_ADMIN_ROLE().call(), bytes(32)):
        await send(w3, deployer, contract.functions.renounceRole(role, deployer.address), what="renouncing a role")
    return timelock


async def register_model(w3: AsyncWeb3[Any], admin: LocalAccount, deployment: Deployment, spec: ModelSpec) -> int:
    contract = ethml_contract(w3, deployment.ethml)
    receipt = await send(
        w3,
        admin,
        contract.functions.registerModel(
            spec.cid,
            bytes.fromhex(spec.artifact_sha256.removeprefix("0x")),
            int(spec.kind),
            spec.decimals,
            spec.feature_count,
        ),
        what=f"registering model {spec.name}",
    )
    events = contract.events.ModelRegistered().process_receipt(receipt)
    return int(events[0]["args"]["modelId"])
