"""dag-pb (PBNode/PBLink) and UnixFS `Data` messages: the protobuf subset IPFS files use.

Encoding follows the dag-pb spec's canonical form (Links before Data; PBLink fields Hash, Name,
Tsize) and go-unixfs's UnixFS Data (Type, Data, filesize, blocksizes unpacked), so the blocks and
their CIDs are byte-identical to Kubo's. Varints are written by `multiformats` and read here, by its rules.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from multiformats import varint

UNIXFS_RAW = 0
UNIXFS_DIRECTORY = 1
UNIXFS_FILE = 2

_VARINT = 0
_LEN = 2


class ProtobufError(ValueError):
    pass


@dataclass
class PBLink:
    hash: bytes
    name: str = ""
    tsize: int = 0


@dataclass
class PBNode:
    links: list[PBLink] = field(default_factory=list)
    data: bytes | None = None


@dataclass
class UnixFSData:
    type: int
    data: bytes | None = None
    filesize: int | None = None
    blocksizes: list[int] = field(default_factory=list)


def _key(number: int, wire: int) -> bytes:
    return bytes(varint.encode((number << 3) | wire))


def _len_field(number: int, payload: bytes) -> bytes:
    return _key(number, _LEN) + bytes(varint.encode(len(payload))) + payload


def _int_field(number: int, value: int) -> bytes:
    return _key(number, _VARINT) + bytes(varint.encode(value))


def encode_node(node: PBNode) -> bytes:
    out = bytearray()
    for link in node.links:
        body = _len_field(1, link.hash) + _len_field(2, link.name.encode()) + _int_field(3, link.tsize)
        out += _len_field(2, body)
    if node.data is not None:
        out += _len_field(1, node.data)
    return bytes(out)


def encode_unixfs(d: UnixFSData) -> bytes:
    out = bytearray(_int_field(1, d.type))
    if d.data is not None:
        out += _len_field(2, d.data)
    if d.filesize is not None:
        out += _int_field(3, d.filesize)
    for size in d.blocksizes:
        out += _int_field(4, size)
    return bytes(out)


#: The longest varint multiformats' unsigned-varint spec allows (63 bits of value), as `multiformats.varint` reads.
_VARINT_MAX_BYTES = 9


def _varint(buf: bytes, pos: int, what: str) -> tuple[int, int]:
    """(value, position after it) of the varint at `pos`, read in place, by the rules of `multiformats.varint`
    (at most 9 bytes, minimally encoded) and with its messages. Its `decode_raw` checks its argument's type on
    every call: about 4 us a varint, 6 million of them in the blocks a hostile DAG makes a reader decode before
    its byte budget stops it. (Decoding each varint from a copy of the rest of the block was quadratic, before.)"""
    end = len(buf)
    if pos >= end:
        raise ProtobufError(f"bad {what} at byte {pos}: Varints must be at least 1 byte long.")
    byte = buf[pos]
    if byte < 0x80:
        return byte, pos + 1
    value = byte & 0x7F
    count = 1
    while byte >= 0x80:
        if count >= _VARINT_MAX_BYTES:
            raise ProtobufError(f"bad {what} at byte {pos}: Varints must be at most {_VARINT_MAX_BYTES} bytes long.")
        if pos + count >= end:
            raise ProtobufError(
                f"bad {what} at byte {pos}: Byte #{count - 1} was a continuation byte, but byte #{count} not available."
            )
        byte = buf[pos + count]
        value |= (byte & 0x7F) << (7 * count)
        count += 1
    if value < 1 << (7 * (count - 1)):
        raise ProtobufError(
            f"bad {what} at byte {pos}: Number {value} was not minimally encoded (as a {count} bytes varint)."
        )
    return value, pos + count


def _fields(buf: bytes) -> list[tuple[int, int, int | bytes]]:
    """(field number, wire type, value) triples; only varint and length-delimited wire types."""
    fields: list[tuple[int, int, int | bytes]] = []
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos, "field key")
        number, wire = key >> 3, key & 7
        if wire == _VARINT:
            value, pos = _varint(buf, pos, "varint")
            fields.append((number, wire, value))
        elif wire == _LEN:
            length, pos = _varint(buf, pos, "length")
            if pos + length > len(buf):
                raise ProtobufError(f"field {number} runs past the end of the block")
            fields.append((number, wire, bytes(buf[pos : pos + length])))
            pos += length
        else:
            raise ProtobufError(f"unsupported wire type {wire} for field {number}")
    return fields


def decode_node(buf: bytes) -> PBNode:
    node = PBNode()
    for number, wire, value in _fields(buf):
        if number == 2 and wire == _LEN:
            assert isinstance(value, bytes)
            link = PBLink(hash=b"")
            for ln, lw, lv in _fields(value):
                if ln == 1 and lw == _LEN:
                    link.hash = bytes(lv)  # type: ignore[arg-type]
                elif ln == 2 and lw == _LEN:
                    link.name = bytes(lv).decode("utf-8", "replace")  # type: ignore[arg-type]
                elif ln == 3 and lw == _VARINT:
                    link.tsize = int(lv)  # type: ignore[arg-type]
            if not link.hash:
                raise ProtobufError("link without a hash")
            node.links.append(link)
        elif number == 1 and wire == _LEN:
            node.data = bytes(value)  # type: ignore[arg-type]
        else:
            raise ProtobufError(f"unexpected PBNode field {number}")
    return node


def decode_unixfs(buf: bytes) -> UnixFSData:
    d = UnixFSData(type=-1)
    for number, wire, value in _fields(buf):
        if number == 1 and wire == _VARINT:
            d.type = int(value)  # type: ignore[arg-type]
        elif number == 2 and wire == _LEN:
            d.data = bytes(value)  # type: ignore[arg-type]
        elif number == 3 and wire == _VARINT:
            d.filesize = int(value)  # type: ignore[arg-type]
        elif number == 4 and wire == _VARINT:
            d.blocksizes.append(int(value))  # type: ignore[arg-type]
        elif number == 4 and wire == _LEN:  # packed form, accepted on read
            raw = bytes(value)  # type: ignore[arg-type]
            at = 0
            while at < len(raw):
                size, at = _varint(raw, at, "block size")
                d.blocksizes.append(size)
    if d.type < 0:
        raise ProtobufError("UnixFS data without a type")
    return d
