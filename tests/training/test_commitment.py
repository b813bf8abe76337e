"""The hand-written ABI encoding of the test-set commitment matches eth_abi's for any CID length."""

from __future__ import annotations

import os

from eth_abi.abi import encode
from eth_utils.crypto import keccak

from ethml.coordinator.schemas import commitment_hex
from ethml.training.flow import commit_test_set


def test_commitment_matches_abi_encode() -> None:
    for cid in ("", "Qm" + "a" * 44, "bafkreibm6jg3ux5qumhcn2b3flc3tyu6dmlb4xa7u5bf44yegnrjhc4yeq", "x" * 32, "y" * 64):
        salt = os.urandom(32)
        expected = keccak(encode(["string", "bytes32"], [cid, salt]))
        assert commit_test_set(cid, salt) == expected
        assert commitment_hex(cid, "0x" + salt.hex()) == "0x" + expected.hex()


async def test_terms_digest_and_commitments_match_the_contract() -> None:
    """The EIP-712 digest a requester signs, computed off chain (native keccak), is the contract's
    termsDigest for any terms; a signature by the standard typed-data signer recovers the requester; the
    submission and score commitments are the contract's."""
    from eth_account import Account

    from ethml.chain import deploy_system, dev_account, embedded_chain, training_contract
    from ethml.training.terms import Terms, TermsDomain, sign_terms
    from ethml.training.trainer import submission_commitment
    from ethml.training.validator import score_commitment

    w3 = await embedded_chain(2)
    deployment = await deploy_system(w3, dev_account(0))
    assert deployment.training is not None
    tasks = training_contract(w3, deployment.training)
    domain = TermsDomain(deployment.chain_id, deployment.training)
    assert domain.separator == await tasks.functions.DOMAIN_SEPARATOR().call()
    requester = dev_account(1)
    for n, (dataset, spec) in enumerate([("Qm" + "d" * 44, "bafy" + "s" * 55), ("", ""), ("x" * 64, "é" * 20)]):
        terms = Terms(dataset, spec, os.urandom(32), 10**18 * (n + 1), 60 + n, 3600 * n + 10, 2 * n + 1, 800_000, n % 2,
                      n, 13 + n, 1 + 5 * n)  # fmt: skip
        nonce, expiry = n * 7, 1_800_000_000 + n
        digest = domain.digest(terms, requester.address, nonce, expiry)
        assert digest == await tasks.functions.termsDigest(terms.as_tuple(), requester.address, nonce, expiry).call()
        signature = sign_terms(requester.key, domain, terms, nonce, expiry)
        assert Account._recover_hash(digest, signature=signature) == requester.address
    salt = os.urandom(32)
    sha = os.urandom(32)
    args = (3, requester.address, "bafkrei" + "m" * 52, sha, 912_345, salt)
    assert submission_commitment(*args) == await tasks.functions.submissionCommitment(*args).call()
    for unusable, scores in ((False, [1, 999_999, 0, 500_000]), (True, []), (True, [912_345, 0])):
        vote = (4, requester.address, unusable, scores, salt)
        assert score_commitment(*vote) == await tasks.functions.scoreCommitment(*vote).call()
