"""The API's schema types: the handlers validate with them and the OpenAPI document is generated
from them, so the two cannot drift apart. Every limit is explicit; a rejection names the field."""

from __future__ import annotations

import json
import time
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    TypeAdapter,
    ValidationError,
    WithJsonSchema,
    model_validator,
)

from ethml._schema_types import JsonInt
from ethml.coordinator.permit import checksum_address
from ethml.errors import IpfsError
from ethml.ipfs.cid import check_cid_text
from ethml.training import flow
from ethml.training.spec import COLUMN_NAME, TaskSpec
from ethml.training.terms import Terms, min_score_units

MAX_BODY_BYTES = 64 * 1024
MAX_FILE_BYTES = 16 * 1024 * 1024
MAX_REWARD_WEI = 2**96 - 1
MAX_DURATION = 365 * 24 * 3600
#: Seconds signed terms (and their permit) must have left when posted: the relayer sends a creation only with
#: a minute left (`relayer.EXPIRY_MARGIN`), so that it is mined before them rather than reverting at its cost.
MIN_EXPIRY_SECONDS = 120
#: A task's status: `pending_chain` until the relayer has created it, then the chain's (`open`, with
#: `training` once a submission is committed and `validating` once the test set is revealed, then how
#: it settled); `failed` when the relayer could not create it.
STATUSES = (
    "pending_chain", "open", "training", "validating",
    "accepted", "rejected", "unusable", "abandoned", "empty", "undecided", "failed",
)  # fmt: skip
Status = Literal[
    "pending_chain", "open", "training", "validating",
    "accepted", "rejected", "unusable", "abandoned", "empty", "undecided", "failed",
]  # fmt: skip
ROLES = ("trainer", "validator")
#: GET /api/tasks: a page cursor (the `next_cursor` of the previous page: the creation time in unix
#: seconds and the id of its last task; a time alone, as earlier servers gave, is taken too) and a page size.
CURSOR = r"^[0-9]{1,12}(\.[0-9]{1,16})?(:[A-Za-z0-9-]{1,64})?$"
MAX_CURSOR = 96
LIMIT = r"^[0-9]{1,3}$"
MAX_LIMIT = 200
#: A task id: 32 hex digits for a posted task, `chain-<n>` for an imported one (never `import`: that
#: path is POST /api/tasks/import).
TASK_ID = r"^(?!import$)[A-Za-z0-9-]{1,64}$"


def import_id(chain_task_id: int) -> str:
    """The API id of a task imported from the chain (`POST /api/tasks/import`)."""
    return f"chain-{chain_task_id}"


#: Job ids: `<chain task>:train:<n>` or `<chain task>:validate:<n>` (n: the seat, plus 9 for each
#: earlier draw).
JOB_ID = r"^[0-9]{1,20}:(train|validate):[0-9]{1,2}$"
WORKER_ID = r"^[A-Za-z0-9._-]{1,64}$"
ADDRESS = r"^0x[0-9a-fA-F]{40}$"


def _address(value: str) -> str:
    body = value[2:]
    canonical = checksum_address(value)
    if body != body.lower() and body != body.upper() and value != canonical:
        raise ValueError("mixed-case address with a wrong EIP-55 checksum")
    return canonical


def _cid(value: str) -> str:
    try:
        return check_cid_text(value)
    except IpfsError as exc:
        raise ValueError(str(exc)) from None


def _wei(value: Any) -> int:
    """A wei amount as an integer or a decimal string (JSON numbers lose precision above 2^53)."""
    if isinstance(value, bool):
        raise ValueError("must be an integer number of wei")
    if isinstance(value, str):
        if not (value.isascii() and value.isdigit() and len(value) <= 30):
            raise ValueError("must be a decimal string of wei")
        value = int(value)
    if not isinstance(value, int):
        raise ValueError("must be an integer number of wei")
    return value


# Patterns and lengths are checked by pydantic-core itself; Python runs only for what a pattern cannot say.
Address = Annotated[str, StringConstraints(strict=True, pattern=ADDRESS), AfterValidator(_address)]
Hex32 = Annotated[str, StringConstraints(strict=True, pattern=r"^0x[0-9a-fA-F]{64}$", to_lower=True)]


def _not_zero(value: str) -> str:
    """A commitment (keccak256 of what it commits to) that is not 0, which the contract refuses."""
    if int(value, 16) == 0:
        raise ValueError("must not be 0 (the contract refuses it): keccak256(abi.encode(test CID, salt))")
    return value


Cid = Annotated[str, StringConstraints(strict=True, min_length=46, max_length=64), AfterValidator(_cid)]
Wei = Annotated[
    int,
    BeforeValidator(_wei),
    Field(ge=1, le=MAX_REWARD_WEI),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "integer", "minimum": 1, "maximum": MAX_REWARD_WEI},
                {"type": "string", "pattern": r"^[0-9]{1,30}$", "description": "decimal wei"},
            ],
            "description": "wei, as a JSON integer or (above 2^53) a decimal string",
        }
    ),
]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PermitIn(Strict):
    """An EIP-2612 permit of EML to the TrainingTasks contract, signed by the requester."""

    owner: Address
    value: Wei
    nonce: JsonInt = Field(ge=0, le=2**64, description="EML's nonces(owner) when relayed (checked then, not here)")
    deadline: JsonInt = Field(ge=1, le=2**40)
    v: JsonInt = Field(ge=27, le=28, description="27 or 28")
    r: Hex32
    s: Hex32


class TestSetSecret(Strict):
    """The hidden test set's CID and salt; given here, the coordinator reveals it in the contract's
    window (it is never shown by the API)."""

    cid: Cid
    salt: Hex32


def commitment_hex(cid: str, salt: str) -> str:
    """The commitment as the API writes it: 0x-hex of `ethml.training.flow.commit_test_set`."""
    return "0x" + flow.commit_test_set(cid, bytes.fromhex(salt[2:])).hex()


class TaskCreate(Strict):
    """A task on terms its requester signed (EIP-712 TaskTerms, see docs/training.md): the relayer
    submits exactly these terms with the signature (`TrainingTasks.createTaskFor`) and cannot change
    any of them."""

    spec: TaskSpec
    spec_cid: Cid = Field(description="the CID (v1, raw leaves) of the spec's canonical JSON, as signed")
    dataset_cid: Cid
    test_set_commitment: Annotated[Hex32, AfterValidator(_not_zero)] = Field(
        description="keccak256(abi.encode(test CID, salt)), as signed; not 0"
    )
    test_set: TestSetSecret | None = None
    reward: Wei
    validations: JsonInt = Field(ge=1, le=9, description="the panel's size: odd")
    min_score: float = Field(ge=0.0, le=1.0, description="signed as round(min_score x 1,000,000)")
    submit_seconds: JsonInt = Field(ge=1, le=MAX_DURATION, description="trainers' commit window, from creation")
    score_seconds: JsonInt = Field(ge=1, le=MAX_DURATION, description="each drawn validator's commit window")
    trainers: JsonInt = Field(default=2, ge=1, le=8, description="training jobs to hand out")
    requester: Address
    nonce: JsonInt = Field(ge=0, le=2**64, description="TrainingTasks.nonces(requester) when relayed")
    parameters_version: JsonInt = Field(
        ge=1, le=2**32 - 1, description="TrainingTasks.parametersVersion() the terms were made under, as signed"
    )
    expiry: JsonInt = Field(ge=0, le=2**40, description="unix seconds: the terms may be relayed until then")
    signature: Annotated[
        str,
        StringConstraints(strict=True, pattern=r"^0x[0-9a-fA-F]{130}$"),
        Field(description="65 bytes: r, s, v (27 or 28; 0 or 1 is stored and relayed as 27 or 28)"),
    ]
    permit: PermitIn | None = Field(default=None, description="optional: without it, the requester approved")

    @model_validator(mode="after")
    def _consistent(self) -> TaskCreate:
        now = int(time.time())
        if self.validations % 2 == 0:
            raise ValueError("validations must be odd (1, 3, 5, 7 or 9)")
        if self.expiry < now + MIN_EXPIRY_SECONDS:
            raise ValueError(f"expiry must be at least {MIN_EXPIRY_SECONDS} s from now (it may not have passed)")
        p = self.permit
        if p is not None:
            if p.owner != self.requester:
                raise ValueError("permit.owner must be the requester")
            if p.value != self.reward:
                raise ValueError("permit.value must equal reward")
            if p.deadline < now + MIN_EXPIRY_SECONDS:
                raise ValueError(f"permit.deadline must be at least {MIN_EXPIRY_SECONDS} s from now")
        secret = self.test_set
        if secret is not None and commitment_hex(secret.cid, secret.salt) != self.test_set_commitment:
            raise ValueError("test_set does not match test_set_commitment")
        return self

    def terms(self) -> Terms:
        """The terms as signed (the model's shape from the spec)."""
        return Terms.for_spec(
            self.spec,
            dataset_cid=self.dataset_cid,
            spec_cid=self.spec_cid,
            test_set_commitment=bytes.fromhex(self.test_set_commitment[2:]),
            reward=self.reward,
            submit_period=self.submit_seconds,
            score_period=self.score_seconds,
            validations=self.validations,
            min_score=min_score_units(self.min_score),
            parameters_version=self.parameters_version,
        )


class TaskImport(Strict):
    """A task its requester created on chain, to be tracked here. The requester signs the import (EIP-712
    `TaskImport` of chain_task_id and trainers on TrainingTasks's domain), so no one else imports it with a
    number of training jobs of its choosing; an admin key may import without a signature."""

    chain_task_id: JsonInt = Field(ge=1, le=2**64)
    trainers: JsonInt = Field(default=2, ge=1, le=8, description="training jobs to hand out")
    signature: (
        Annotated[
            str,
            StringConstraints(strict=True, pattern=r"^0x[0-9a-fA-F]{130}$"),
            Field(
                description="65 bytes: r, s, v; the chain task's requester's EIP-712 TaskImport(uint256 taskId,"
                "uint8 trainers) on TrainingTasks's domain. Required unless the API key is an admin's"
            ),
        ]
        | None
    ) = None


class ApiKeyCreate(Strict):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9 ._-]+$")
    role: Literal["requester", "admin"] = "requester"


class WorkerLogin(Strict):
    """The first message on /ws/worker: who the worker is and its signature of the server's nonce."""

    type: Literal["auth"] = "auth"
    role: Literal["trainer", "validator"]
    address: Annotated[str, StringConstraints(strict=True, pattern=ADDRESS)]
    signature: Annotated[str, StringConstraints(strict=True, max_length=200, pattern=r"^0x[0-9a-fA-F]*$")]
    worker_id: Annotated[str, StringConstraints(strict=True, pattern=WORKER_ID)] | None = None
    capacity: int = Field(default=1, ge=1, le=16, strict=True)


class ClusterSize(BaseModel):
    """The Dask cluster behind a cluster-backed worker (`ethml worker --dask`): 0 workers while its
    scheduler does not answer."""

    workers: int = Field(ge=0, le=1_000_000, strict=True)
    threads: int = Field(ge=0, le=100_000_000, strict=True)


class LoadReport(BaseModel):
    """A worker's heartbeat: its machine's CPU and memory use in percent, and the size of its Dask
    cluster if it has one (unknown fields ignored)."""

    type: Literal["load"]
    cpu: float = Field(default=0.0, ge=0.0, le=100.0)
    memory: float = Field(default=0.0, ge=0.0, le=100.0)
    running: int | None = Field(default=None, ge=0, le=1000, strict=True)
    cluster: ClusterSize | None = None


#: The most characters of a job result's `detail` the server keeps and logs, counted as JSON with every character
#: outside ASCII escaped (as it is stored: an emoji is 12), the note of what was cut included.
DETAIL_CHARS = 4000


def bounded_detail(detail: Any) -> Any:
    """A worker's `detail` as it is stored and logged: as sent when its JSON is at most DETAIL_CHARS long, else the
    longest start of its text (its JSON, unless it is a string) that fits DETAIL_CHARS with a note of how much was
    cut. A detail this returns is returned unchanged by it, so the server keeps what the worker cut before sending.
    A worker's ordinary detail (a model's CID and hash, a vote's scores, an error's message) is far shorter; one of
    60 KB was stored, logged with each failure, and read back whole for every result any worker sent for the job."""
    if detail is None:
        return None
    text = detail if isinstance(detail, str) else json.dumps(detail, sort_keys=True, default=str)
    if len(json.dumps(text) if isinstance(detail, str) else text) <= DETAIL_CHARS:
        return detail

    def cut(keep: int) -> str:
        return f"{text[:keep]}... ({len(text) - keep} characters cut)"

    # The longest start that fits (no character takes less than one in the JSON, so at most DETAIL_CHARS of them):
    # a search, since escapes make the JSON of a start longer than the start by an amount only the start tells.
    low, high = 0, min(len(text), DETAIL_CHARS)
    while low < high:
        mid = (low + high + 1) // 2
        if len(json.dumps(cut(mid))) <= DETAIL_CHARS:
            low = mid
        else:
            high = mid - 1
    return cut(low)


class JobResult(BaseModel):
    """A worker's result for a job, naming the delivery it was sent with (unknown fields ignored)."""

    type: Literal["result"]
    job: Annotated[str, StringConstraints(strict=True, pattern=JOB_ID)]
    delivery: int | None = Field(default=None, ge=1, le=1000, strict=True)
    ok: bool = Field(default=False, strict=True)
    detail: Annotated[dict[str, Any] | list[Any] | str | None, AfterValidator(bounded_detail)] = None
    tx: Annotated[str, StringConstraints(strict=True, pattern=r"^0x[0-9a-fA-F]{64}$")] | None = None


class Drain(BaseModel):
    """A worker stopping gracefully: send it no more jobs; it finishes those it runs (unknown fields
    ignored)."""

    type: Literal["drain"]


class JobRelease(BaseModel):
    """A worker handing back a job it will not finish, naming the delivery it was sent with: the job
    goes to another worker now instead of after the idle timeout (unknown fields ignored)."""

    type: Literal["release"]
    job: Annotated[str, StringConstraints(strict=True, pattern=JOB_ID)]
    delivery: int = Field(ge=1, le=1000, strict=True)


#: What a logged-in worker may send.
WorkerMessage = LoadReport | JobResult | Drain | JobRelease
WORKER_MESSAGE: TypeAdapter[WorkerMessage] = TypeAdapter(Annotated[WorkerMessage, Field(discriminator="type")])


class ApiKeyOut(BaseModel):
    id: str = Field(description="the key's id (the SHA-256 of the key, which is all the server stores)")
    name: str
    role: str
    key: str = Field(description="shown once; only its hash is stored")


#: An API key's id: the SHA-256 of the key, in hex.
KEY_ID = r"^[0-9a-f]{64}$"


class ApiKeyView(BaseModel):
    id: str = Field(description="the SHA-256 of the key, in hex (the key itself is never stored)")
    name: str
    role: str
    created: float = Field(description="unix time")


class ApiKeyList(BaseModel):
    keys: list[ApiKeyView]


class ApiKeyRevoked(BaseModel):
    id: str
    name: str
    role: str
    revoked: bool = True


class Submission(BaseModel):
    trainer: str
    revealed: bool = False
    model_cid: str | None = None
    claimed_score: int | None = None
    score: int | None = Field(default=None, description="the panel's decided score, once settled")
    undecided: bool = Field(
        default=False, description="settled with no clear majority on its score: bond released, never accepted"
    )
    revealed_elsewhere: int | None = Field(
        default=None,
        description="the task its artifact was revealed in before it was committed: scored, never accepted nor paid",
    )
    bond: str = "locked"
    tx: str | None = None


class Seat(BaseModel):
    seat: int
    validator: str
    draw: int
    state: Literal["drawn", "committed", "revealed", "replaced"]
    unusable: bool | None = None
    scores: list[int] | None = None
    tx: str | None = None


class TaskView(BaseModel):
    id: str
    status: Status
    chain_task_id: int | None = None
    requester: str
    reward: str
    validations: int
    min_score: float
    submit_seconds: int
    score_seconds: int
    submit_deadline: int | None = Field(default=None, description="unix seconds, once on chain")
    reveal_deadline: int | None = None
    test_deadline: int | None = None
    spec_cid: str | None = None
    dataset_cid: str
    created_at: float
    submissions: list[Submission] = []
    panel: list[Seat] = []
    transactions: dict[str, str] = {}
    model_id: int | None = None
    registration: str | None = None
    error: str | None = None


class FileAdded(BaseModel):
    cid: str = Field(description="the file's CID (raw leaves, CIDv1); fetch it from /ipfs/{cid}")
    size: int


class Disconnected(BaseModel):
    disconnected: str = Field(description="the worker's id")
    workers: int = Field(description="how many connections of that worker were ordered closed (normally one)")


class TaskCreated(BaseModel):
    id: str
    status: str
    location: str


class TaskPage(BaseModel):
    tasks: list[TaskView]
    next_cursor: str | None = None


class WorkerView(BaseModel):
    id: str
    address: str
    role: str
    instance: str
    running: int
    capacity: int
    cpu: float
    memory: float
    load: float
    cluster: ClusterSize | None = None
    draining: bool = Field(default=False, description="stopping: finishes its jobs, takes no new one")
    trained: int = Field(
        default=0,
        description="a trainer account's training results recorded in the last 24 hours, each with its "
        "commitment on chain: accounts with more (up to 3) are given training jobs first",
    )
    connected_at: float
    last_seen: float


class WorkerList(BaseModel):
    workers: list[WorkerView]


class Health(BaseModel):
    ok: bool
    redis: bool
    chain_block: int | None
    instance: str


class ErrorBody(BaseModel):
    status: int
    message: str
    field: str | None = None


class ErrorOut(BaseModel):
    error: ErrorBody


UNION_TAGS = frozenset({"int", "float", "str", "bool", "none", "list", "dict"})
#: Patterns whose mismatch is better said in words than by quoting the expression.
PATTERN_WORDS = {
    COLUMN_NAME: "a column name may not hold control, invisible or bidirectional-override characters",
}


#: The most characters of a validation problem's message an answer repeats.
ERROR_CHARS = 300


def first_error(exc: ValidationError) -> tuple[str | None, str]:
    """(dotted field, message) of the first problem pydantic found."""
    err = exc.errors(include_url=False)[0]
    # A union's error names the member it tried ("n_estimators.float"): the field is what the client sent.
    loc = [str(p) for p in err.get("loc", ()) if p != "__root__" and p not in UNION_TAGS and "[" not in str(p)]
    field = ".".join(loc)[:ERROR_CHARS] or None  # (an unknown field's name is the client's: cut)
    message = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
    if err.get("type") == "string_pattern_mismatch":
        message = PATTERN_WORDS.get(str((err.get("ctx") or {}).get("pattern")), message)
    if len(message) > ERROR_CHARS:  # (pydantic quotes some input: a 16 KB tag came back whole)
        message = f"{message[:ERROR_CHARS]}... ({len(message) - ERROR_CHARS} characters cut)"
    return field, message
