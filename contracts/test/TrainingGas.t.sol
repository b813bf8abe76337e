// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {TrainingBase} from "../src/TrainingBase.sol";
import {TrainingTasks} from "../src/TrainingTasks.sol";
import {vm} from "./Base.sol";
import {TrainingFixture} from "./TrainingFixture.sol";

/// @dev The gas of every training transaction, typical and worst cases (docs/gas-table.md). Run as
///     node_modules/.bin/forge test --match-contract TrainingGasTest --isolate -vv
/// --isolate makes every call its own transaction, so each figure is what a transaction's receipt
/// would say: intrinsic cost included, storage cold, refunds applied. (Without it the figures come
/// out low, as everything after the first call of a test finds its storage warm.)
contract TrainingGasTest is TrainingFixture {
    event log_named_uint(string key, uint256 val);

    uint256 internal constant SIGNER_KEY = 0x5157;
    bytes32 internal constant PERMIT_TYPEHASH =
        keccak256("Permit(address owner,address spender,uint256 value,uint256 nonce,uint256 deadline)");
    mapping(string => uint256) internal worst;

    function setUp() public {
        _setUpTraining();
    }

    /// @dev No single training transaction may come near a block (30 M gas): the worst cases stay below this.
    uint256 internal constant CEILING = 3_000_000;

    /// @dev Report the last call's transaction gas under `label`; repeated labels keep the largest.
    function _gas(string memory label) internal {
        uint256 used = vm.lastCallGas().gasTotalUsed;
        vm.assertTrue(used < CEILING, label);
        if (used <= worst[label]) return;
        worst[label] = used;
        emit log_named_uint(label, used);
    }

    /// @dev A 64-byte CIDv1, distinct per `i` (the longest a model CID may be).
    function _cid(uint256 i) internal pure returns (string memory) {
        string memory n = vm.toString(1_000 + i);
        return string.concat("bafkrei", n, "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa");
    }

    function _trainer(uint256 i) internal view returns (address) {
        return i < 4 ? trainers[i] : spares[i - 4];
    }

    /// @dev 16 trainers (trainers and spares 0-11) and 15 validators (validators and spares 12-19).
    function _bigCast() internal {
        for (uint256 i = 4; i < 16; ++i) {
            _stake(_trainer(i), TrainingBase.Role.Trainer, STAKE);
        }
        for (uint256 i = 12; i < 20; ++i) {
            _stake(spares[i], TrainingBase.Role.Validator, STAKE);
        }
        vm.roll(block.number + 1);
    }

    /// @dev Draw a panel of nine different validators (the most members to settle), measuring the draw.
    function _drawNine(uint256 id, string memory label) internal {
        uint256 snap = vm.snapshotState();
        bytes32 seed = _drawDistinct(id);
        vm.revertToState(snap);
        _draw(id, seed);
        _gas(label);
    }

    /// @dev A task of 9 seats with 16 revealed 64-byte submissions (test set revealed unless `abandoned`),
    /// its panel drawn: nine different validators.
    function _bigTask() internal returns (uint256 id) {
        return _bigTask(false);
    }

    function _bigTask(bool abandoned) internal returns (uint256 id) {
        id = _create(9, 800_000);
        for (uint256 i; i < 16; ++i) {
            _commit(id, _trainer(i), _cid(i), 900_000);
        }
        _toRevealWindow(id);
        for (uint256 i; i < 16; ++i) {
            _reveal(id, _trainer(i), _cid(i), 900_000);
            _gas("revealSubmission (64-byte CID)");
        }
        if (abandoned) {
            vm.warp(_task(id).testDeadline + 1);
            _finalize(id);
            _gas("finalizeTask: test set never revealed, starts the check");
        } else {
            _toTestWindow(id);
            _revealTest(id);
        }
        _drawNine(id, "drawPanel, 9 seats");
    }

    function _scores16(uint32 first, uint32 rest) internal pure returns (uint32[] memory s) {
        s = new uint32[](16);
        s[0] = first;
        for (uint256 i = 1; i < 16; ++i) {
            s[i] = rest;
        }
    }

    function test_gas_a_task_from_stake_to_settlement() public {
        vm.prank(spares[20]);
        token.approve(address(tasks), type(uint256).max);
        _gas("approve (once per account)");
        vm.prank(spares[20]);
        tasks.stake(TrainingBase.Role.Trainer, STAKE);
        _gas("stake, trainer, first time");
        _stake(spares[21], TrainingBase.Role.Validator, STAKE);
        _gas("stake, validator, first time (enters the draw)");
        vm.roll(block.number + 1);
        _stake(validators[0], TrainingBase.Role.Validator, 1 ether);
        _gas("stake, validator, adding to its stake");
        vm.roll(block.number + 1);
        uint256 id = _create(3, 800_000);
        _gas("createTask");
        _commit(id, trainers[0], MODEL, 950_000);
        _gas("commitSubmission");
        _commit(id, trainers[1], JUNK, 900_000);
        _gas("commitSubmission");
        _toRevealWindow(id);
        _reveal(id, trainers[0], MODEL, 950_000);
        _gas("revealSubmission");
        _reveal(id, trainers[1], JUNK, 900_000);
        _gas("revealSubmission");
        _toTestWindow(id);
        _revealTest(id);
        _gas("revealTestSet");
        _draw(id, keccak256("seed"));
        _gas("drawPanel, 3 seats");
        address[] memory seated = _seated(id);
        for (uint256 i; i < 3; ++i) {
            _commitVote(id, seated[i], false, _scores(950_000, 100_000));
            _gas("commitScores");
        }
        for (uint256 i; i < 3; ++i) {
            _revealVote(id, seated[i]);
            _gas("revealScores, 2 submissions");
        }
        _finalize(id);
        _gas("finalizeTask: 3 seats, 2 submissions, accepted and registered, 1 bond forfeited");
        panel.burnPenalties();
        _gas("burnPenalties");
    }

    function test_gas_a_relayed_task() public {
        address signer = vm.addr(SIGNER_KEY);
        vm.prank(requester);
        token.transfer(signer, REWARD);
        TrainingTasks.Terms memory terms = _terms(3, 800_000);
        uint256 expiry = block.timestamp + 1 hours;
        (uint8 v, bytes32 r, bytes32 s) = vm.sign(SIGNER_KEY, tasks.termsDigest(terms, signer, 0, expiry));
        TrainingTasks.Permit memory p;
        p.deadline = expiry;
        bytes32 permitHash = keccak256(abi.encode(PERMIT_TYPEHASH, signer, address(tasks), REWARD, 0, expiry));
        (p.v, p.r, p.s) = vm.sign(SIGNER_KEY, keccak256(abi.encodePacked(hex"1901", token.DOMAIN_SEPARATOR(), permitHash)));
        vm.prank(spares[0]);
        tasks.createTaskFor(terms, signer, expiry, abi.encodePacked(r, s, v), p);
        _gas("createTaskFor (relayed, signed terms and permit)");
        vm.prank(signer);
        tasks.useNonce();
        _gas("useNonce");
    }

    /// The largest settlement with a winner: 16 submissions, 9 seats, every validator outvoted on one
    /// submission and slashed, 15 bonds forfeited (the majority voted their artifacts 0), the model
    /// registered.
    function test_gas_worst_finalize_accepted() public {
        _bigCast();
        uint256 id = _bigTask();
        address[] memory seated = _seated(id);
        for (uint256 v; v < 9; ++v) {
            uint32[] memory s = _scores16(950_000, 0);
            s[v + 1] = 1_000_000; // seat v alone is far on submission v + 1
            _commitVote(id, seated[v], false, s);
        }
        for (uint256 i; i < 9; ++i) {
            _revealVote(id, seated[i]);
            _gas("revealScores, 16 submissions");
        }
        _finalize(id);
        _gas("finalizeTask: 9 seats, 16 submissions, 9 slashed, 15 bonds forfeited, registered");
        vm.assertEq(uint256(_task(id).status), uint256(TrainingBase.Status.Accepted), "accepted");
        vm.assertEq(tasks.pendingBurn(), 9 * 10 ether + 15 * 10 ether, "9 slashes, 15 bonds");
    }

    /// @dev Sixteen different artifacts all verified on the holdout, by all nine validators.
    function _allVerified() internal pure returns (uint32[] memory s) {
        s = _scores16(900_000, 900_000);
    }

    /// The largest forfeit: an unusable test set, 16 different verified artifacts paid one by one and 9
    /// validators paid.
    function test_gas_worst_finalize_unusable() public {
        _bigCast();
        uint256 id = _bigTask();
        _allVote(id, true, _allVerified());
        _finalize(id);
        _gas("finalizeTask: 9 seats, 16 submissions, unusable, 16 verified (the earliest paid, 9 seats paid)");
        vm.assertEq(uint256(_task(id).status), uint256(TrainingBase.Status.Unusable), "unusable");
    }

    /// The test set never revealed: the check, then 16 different verified artifacts and 9 validators paid.
    function test_gas_worst_finalize_abandoned() public {
        _bigCast();
        uint256 id = _bigTask(true);
        _allVote(id, true, _allVerified());
        _finalize(id);
        _gas("finalizeTask: 9 seats, 16 submissions, abandoned, 16 verified (the earliest paid, 9 seats paid)");
        vm.assertEq(uint256(_task(id).status), uint256(TrainingBase.Status.Abandoned), "abandoned");
    }

    /// Every seat committed and none revealed: 9 validators slashed, 16 bonds released.
    function test_gas_worst_finalize_silent_panel() public {
        _bigCast();
        uint256 id = _bigTask();
        address[] memory seated = _seated(id);
        for (uint256 i; i < 9; ++i) {
            _commitVote(id, seated[i], false, _scores16(950_000, 100_000));
        }
        _afterScoreReveals(id);
        _finalize(id);
        _gas("finalizeTask: 9 seats committed, none revealed (9 slashed), 16 submissions");
        vm.assertEq(uint256(_task(id).status), uint256(TrainingBase.Status.Undecided), "undecided");
    }

    /// The largest draw: 9 seats while the requester and all 16 trainers hold validator stakes the
    /// draw must leave out; then 9 no-shows replaced and the 9 seats drawn again.
    function test_gas_worst_draw_and_replacement() public {
        _bigCast();
        for (uint256 i; i < 16; ++i) {
            _stake(_trainer(i), TrainingBase.Role.Validator, STAKE);
        }
        _stake(requester, TrainingBase.Role.Validator, STAKE);
        vm.roll(block.number + 1);
        uint256 id = _bigTask();
        address[] memory benched = _seated(id);
        vm.warp(_task(id).scoreDeadline + 1);
        panel.replaceNoShows(id);
        _gas("replaceNoShows, 9 no-shows");
        for (uint256 i; i < 9; ++i) {
            _stake(benched[i], TrainingBase.Role.Validator, 2 ether); // back in, so the next draw has as many
        }
        vm.roll(block.number + 1);
        _drawNine(id, "drawPanel, 9 seats");
    }

    function test_gas_leaving_and_registration_retries() public {
        vm.prank(validators[0]);
        tasks.setActive(false);
        _gas("setActive");
        vm.prank(validators[1]);
        tasks.requestUnstake(TrainingBase.Role.Validator);
        _gas("requestUnstake");
        vm.warp(block.timestamp + 1 days);
        vm.prank(validators[1]);
        tasks.withdrawStake(TrainingBase.Role.Validator);
        _gas("withdrawStake");
        uint256[4] memory ids;
        for (uint256 i; i < 4; ++i) {
            ids[i] = _create(1, 800_000);
            _submitAll(ids[i], _one(trainers[0]), _cids(_model(ids[i])), _claims(950_000));
            _draw(ids[i], keccak256(abi.encode(i)));
            _allVote(ids[i], false, _scores(950_000));
        }
        for (uint256 i; i < 4; ++i) {
            _finalize(ids[i]); // the fourth is deferred by the cap of three a day
        }
        _gas("finalizeTask: registration deferred by the cap");
        vm.warp(block.timestamp + 1 days);
        panel.retryRegistration(ids[3]);
        _gas("retryRegistration");
    }
}
