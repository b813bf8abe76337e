"""IPFS without a daemon: Kubo-identical CIDs, a verified local blockstore, trustless gateways."""

from ethml.ipfs.blockstore import Blockstore, default_blockstore_dir
from ethml.ipfs.cid import block_cid, parse_cid
from ethml.ipfs.client import DATA_POINT_LIMIT, IpfsClient, IpfsConfig
from ethml.ipfs.gateway import make_app
from ethml.ipfs.unixfs import build_file

__all__ = [
    "DATA_POINT_LIMIT",
    "Blockstore",
    "IpfsClient",
    "IpfsConfig",
    "block_cid",
    "build_file",
    "default_blockstore_dir",
    "make_app",
    "parse_cid",
]
