"""Every Redis key the coordinator uses, built here and nowhere else (all under the prefix `ethml:`).

- `task:<id>` a task document (JSON); `tasks` and `tasks:<status>` sorted sets by creation time;
  `chaintask:<n>` the API id of on-chain task n;
- `relay` the stream of tasks waiting for `createTaskFor` (group `relayers`);
- `jobs:<role>` the job stream of a worker role (group `workers`); `jobid:<job>` marks a job queued
  once; `result:<job>` its first result (a successful one); `jobdeadline:<job>` its time limit;
  `taskworkers:<task>:<role>` who has worked on a task; `dead` the dead-letter stream; `trained:<account>`
  an account's recorded training results and `given` when each account was last given a training job;
- `apikey:<sha256>` API keys by hash; `rl:<bucket>` token buckets;
- `worker:<address>:<id>` connected workers (expiring) and `workers` their consumer names;
  `kick:<address>:<id>` an admin's disconnect order; `loginnonce:<nonce>` used login nonces;
  `uploadtoken:<token>` workers' upload tokens;
- `checkpoint` the last block the follower applied; `samples` the dashboard's history; `lock:<name>` leases.
"""

from __future__ import annotations

P = "ethml:"

TASKS = f"{P}tasks"
RELAY = f"{P}relay"
DEAD = f"{P}dead"
#: When each trainer account was last given a training job, by any instance (a sorted set: account in lower
#: case -> unix time, trimmed to the last day): accounts that stand alike take turns across the cluster.
GIVEN = f"{P}given"
WORKERS = f"{P}workers"
CHECKPOINT = f"{P}checkpoint"
#: The deployment this Redis's state belongs to (chain id, TrainingTasks, its block), as the first start wrote it.
DEPLOYMENT = f"{P}deployment"
SAMPLES = f"{P}samples"


def task(task_id: str) -> str:
    return f"{P}task:{task_id}"


def signed_terms(signature: str) -> str:
    """The task posted with these signed terms, by their signature's r and s (0x-hex, 65 bytes)."""
    return f"{P}signed:{signature[2:130].lower()}"


def tasks_in(status: str) -> str:
    return f"{P}tasks:{status}"


def chain_task(chain_task_id: int) -> str:
    return f"{P}chaintask:{chain_task_id}"


def nonce_waits(key_name: str) -> str:
    """The tasks posted with an API key whose terms wait for the requester's earlier nonce (a sorted set:
    task id by the time first found waiting)."""
    return f"{P}noncewaits:{key_name}"


def relay_reverts(key_name: str) -> str:
    """How many creations of tasks posted with an API key were mined and reverted within the hour (a counter
    that expires an hour after its first)."""
    return f"{P}relayreverts:{key_name}"


def importing(chain_task_id: int) -> str:
    """Held (with a time limit) while a POST /api/tasks/import of the chain task searches and replays."""
    return f"{P}importing:{chain_task_id}"


def jobs(role: str) -> str:
    return f"{P}jobs:{role}"


def job_queued(job: str) -> str:
    return f"{P}jobid:{job}"


def result(job: str) -> str:
    return f"{P}result:{job}"


def job_forgiven(job: str) -> str:
    """How many deliveries of a validator's seat ended in a failed vote (they do not count toward the limit)."""
    return f"{P}jobforgiven:{job}"


def job_pause(job: str) -> str:
    """Set (expiring) while a validator's seat whose vote failed waits before it is delivered again."""
    return f"{P}jobpause:{job}"


def trained(address: str) -> str:
    """When each training result of an account was recorded (a sorted set: job -> unix time, trimmed to the last
    day), each with its commitment on chain: its standing, which puts it first for training jobs."""
    return f"{P}trained:{address.lower()}"


def proof_asked(job: str) -> str:
    """Set (expiring) for a moment after the chain was asked for the commitment behind a job's result."""
    return f"{P}proofasked:{job}"


def job_deadline(job: str) -> str:
    """The unix time by which the worker a job was delivered to must report it."""
    return f"{P}jobdeadline:{job}"


def job_worker(job: str) -> str:
    """The consumer name of the worker a job was last delivered to (kept as long as its deadline): whose it was
    when it is reclaimed from a silent worker, which `XAUTOCLAIM` does not say."""
    return f"{P}jobworker:{job}"


def task_workers(chain_task_id: str | int, role: str) -> str:
    return f"{P}taskworkers:{chain_task_id}:{role}"


def api_key(key_hash: str) -> str:
    return f"{P}apikey:{key_hash}"


API_KEY_PATTERN = f"{P}apikey:*"


def bucket(name: str) -> str:
    return f"{P}rl:{name}"


def worker(consumer: str) -> str:
    """A connected worker's record, under its consumer name `<address>:<worker id>` (an id is the
    worker's own choice: two accounts may use the same one)."""
    return f"{P}worker:{consumer}"


def worker_session(consumer: str) -> str:
    """The session of the worker's latest login (its connection that jobs may be taken for), under its consumer
    name: unlike the record, written only by a login and kept while that connection reports, not removed when a
    connection ends."""
    return f"{P}workersession:{consumer}"


def kick(consumer: str) -> str:
    return f"{P}kick:{consumer}"


def login_nonce(nonce: str) -> str:
    return f"{P}loginnonce:{nonce}"


def upload_token(token: str) -> str:
    return f"{P}uploadtoken:{token}"


def stored_artifact(chain_task: int, account: str) -> str:
    """The CID of the artifact this server stored for `account`'s submission to on-chain task n."""
    return f"{P}storedartifact:{chain_task}:{account.lower()}"


def failed_artifact_bodies(chain_task: int, account: str) -> str:
    """The bodies `account` sent for its submission to on-chain task n this hour that were not stored."""
    return f"{P}failedartifacts:{chain_task}:{account.lower()}"


def lock(name: str) -> str:
    return f"{P}lock:{name}"
