"""`ethml serve`'s settings (the command's options, and what tests and embedders set directly)."""

from __future__ import annotations

import ipaddress
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from eth_account.signers.local import LocalAccount

from ethml.chain.deploy import Deployment

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def trusted_network(value: str) -> Network:
    """A `--trusted-proxy` value: an address or a network in CIDR notation (ValueError saying what is wrong)."""
    try:
        network = ipaddress.ip_network(value.strip(), strict=False)
    except ValueError:
        raise ValueError(f"{value!r} is not an IP address or a network in CIDR notation (10.0.0.0/8)") from None
    mapped = ipaddress.IPv6Network("::ffff:0:0/96")
    if isinstance(network, ipaddress.IPv6Network) and network.subnet_of(mapped):
        # ::ffff:10.0.0.5, as a dual-stack socket (and its access log) shows an IPv4 peer: the peer is compared
        # as the IPv4 address it is, so the proxy is that IPv4 address too
        v4 = network.network_address.ipv4_mapped
        assert v4 is not None
        return ipaddress.IPv4Network((v4, network.prefixlen - 96))
    return network


@dataclass
class ServeConfig:
    rpc_url: str
    deployment: Deployment
    relayer: LocalAccount
    data_dir: Path
    redis_url: str | None = None
    host: str = "127.0.0.1"
    port: int = 8545 + 1000
    #: Token buckets: requests per second and burst, per API key and per client address.
    key_rate: float = 20.0
    key_burst: int = 40
    ip_rate: float = 50.0
    ip_burst: int = 100
    #: Worker logins (/ws/worker connections) per second and burst, per client address (each costs a chain
    #: call), besides the client address's requests.
    login_rate: float = 1.0
    login_burst: int = 30
    #: Reverse proxies (addresses and networks) whose `X-Forwarded-For` names the client (`auth.client_address`):
    #: behind one, every client would otherwise share the proxy's buckets. None: the TCP peer is the client.
    trusted_proxies: tuple[Network, ...] = ()
    #: Connections one client (an address; an IPv6 /64) may have open at once; more are closed as they are
    #: made (`edge.EdgeServer`). 0: no cap. A trusted proxy's connections are not counted.
    max_client_connections: int = 256
    #: Seconds a client has to send a JSON body (up to 64 KiB) and a file (up to 16 MiB); slower ones
    #: get a 408 and their connection is closed.
    body_timeout: float = 10.0
    file_timeout: float = 120.0
    #: MiB each uploader (a worker's account, a requester's API key; not an admin's) may add to the
    #: blockstore per hour, in bursts of as much; and MiB the blockstore's disk keeps free (an upload that
    #: would leave less is refused with 507).
    upload_quota_mib: float = 1024.0
    min_free_disk_mib: float = 1024.0
    #: Seconds between a worker's load reports (its heartbeat), and without one after which it is disconnected.
    heartbeat_interval: float = 3.0
    heartbeat_timeout: float = 15.0
    #: Seconds a /ws/worker connection has to log in (WebSocket pings and pongs do not extend it).
    login_within: float = 10.0
    #: Messages an account's logged-in workers may send per second, all its connections to this instance
    #: together, in bursts of up to `worker_message_burst`; past that they are read at this rate (none is cut
    #: off). A worker sends one message per job it finishes or hands back; its load reports at its pace (one per
    #: heartbeat) are not counted.
    worker_message_rate: float = 20.0
    worker_message_burst: int = 100
    #: Workers one account may have connected to this instance at once: a login past it is refused (4001). Each
    #: connection's load reports cost Redis calls at its pace, outside the account's message rate.
    worker_connections: int = 100
    #: Seconds between checks (on its load reports) that a connected trainer's account still holds a trainer
    #: stake: one that unstaked is refused (4001), as its next login would be. (Validators are not checked
    #: again: their drawn seats stay theirs after they ask to unstake.)
    stake_recheck: float = 60.0
    job_timeout: float = 30.0
    #: Seconds a job may take beyond its task's training time limit (once per training it may need)
    #: before it is taken back from a worker that is still connected but has not reported it.
    job_margin: float = 600.0
    max_deliveries: int = 3
    confirmations: int = 0
    poll_interval: float = 0.5
    #: Run the relayer (create posted tasks on chain). Off only to measure the API alone.
    relay: bool = True
    #: Seconds a relay entry may sit untouched (its instance killed) before a live relayer takes it over.
    relay_timeout: float = 30.0
    instance: str = field(default_factory=lambda: f"{os.uname().nodename}-{os.getpid()}-{secrets.token_hex(2)}")
