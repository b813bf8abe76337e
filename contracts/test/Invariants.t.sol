// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {EMLToken} from "../src/EMLToken.sol";
import {EthML} from "../src/EthML.sol";
import {IEthML} from "../src/IEthML.sol";
import {vm, EthMLFixture} from "./Base.sol";
import {RecordingConsumer} from "./Consumers.sol";

/// @dev Random sequences of requests (direct or through a consumer with a callback), commitments (valid
/// nonces or not, any answer vectors), reveals (honest or not), closes, expiries (of rounds and of
/// queued requests), cancellations, claims, funding and time passing, with rounds of up to three
/// requests. After every action it checks that no closed request changed its outcome.
contract Handler is EthMLFixture {
    RecordingConsumer public consumer;
    uint256 public doubleCommits;
    uint256 public closes;
    uint256 public changedOutcomes;
    mapping(uint256 => uint256) public tipOf;
    mapping(uint256 => uint8) internal firstStatus;
    mapping(uint256 => int256) internal firstPrediction;
    mapping(bytes32 => mapping(address => uint256)) internal commitsBy;
    mapping(bytes32 => mapping(address => int256[])) internal committed;

    constructor() {
        EthML.Parameters memory p = _params(1, 16);
        p.maxQueueBlocks = 200;
        p.requestsPerRound = 3;
        p.bondTipBps = 5_000;
        _deployWith(p);
        consumer = new RecordingConsumer(ethml);
        vm.deal(address(this), 1_000 ether);
    }

    function system() external view returns (EthML, EMLToken) {
        return (ethml, token);
    }

    function minerAt(uint256 i) external view returns (address) {
        return miners[i];
    }

    function request(uint256 modelSeed, uint96 tip, bool viaConsumer) external {
        uint256 modelId = modelSeed % 2 == 0 ? classifier : regressor;
        if (viaConsumer) {
            uint256 deposit = ethml.minimumDeposit(50_000);
            consumer.request{value: deposit}(modelId, CID, 50_000);
        } else {
            _request(modelId, uint256(tip) % 5 ether);
        }
        _check();
    }

    /// @dev The first miner from `minerSeed` on without a commitment in the open round commits.
    function commitOne(uint256 minerSeed, uint256 answerSeed, bool invalidNonce) external {
        uint256 roundId = _currentRound();
        if (roundId == 0) return;
        _afterOpening();
        bytes32 key = _key(roundId);
        address miner;
        for (uint256 k = 0; k < 7; ++k) {
            address candidate = miners[(minerSeed + k) % 7];
            if (commitsBy[key][candidate] == 0) {
                miner = candidate;
                break;
            }
        }
        if (miner == address(0) || answerSeed % 5 == 0) miner = miners[minerSeed % 7]; // sometimes a second try
        uint256 n = _roundRequests().length;
        int256[] memory answers = new int256[](n);
        for (uint256 j = 0; j < n; ++j) {
            answers[j] = int256((answerSeed >> (8 * j)) % 3);
        }
        uint256 nonce = invalidNonce && answerSeed % 3 == 0 ? answerSeed : _mine(miner);
        uint256 slot = ethml.getCurrentRound().commits;
        vm.prank(miner);
        try ethml.commit(roundId, nonce, _commitment(miner, roundId, answers)) {
            if (++commitsBy[key][miner] > 1) ++doubleCommits;
            slotMiners[key][slot] = miner;
            slotOf[key][miner] = slot;
            committed[key][miner] = answers;
        } catch {}
        _check();
    }

    /// @dev The first committed miner from `minerSeed` on reveals (its vector, or a tampered one).
    function revealOne(uint256 minerSeed, uint8 honesty) external {
        uint256 roundId = _currentRound();
        if (roundId == 0) return;
        bytes32 key = _key(roundId);
        for (uint256 k = 0; k < 7; ++k) {
            address miner = miners[(minerSeed + k) % 7];
            int256[] memory answers = committed[key][miner];
            if (answers.length == 0 || slotAnswers[key][slotOf[key][miner]].length != 0) continue;
            if (honesty % 8 == 0) answers[0] += 1;
            vm.prank(miner);
            try ethml.reveal(roundId, answers, _salt(miner, roundId)) {
                slotAnswers[key][slotOf[key][miner]] = answers;
            } catch {}
            break;
        }
        _check();
    }

    function close(uint256 blocks) external {
        vm.roll(block.number + blocks % 16);
        uint256 roundId = _currentRound();
        if (roundId == 0) return;
        (address[5] memory who, int256[] memory table) = _table(roundId, address(0), new int256[](0));
        try ethml.closeRound(roundId, who, table) {
            ++closes;
        } catch {}
        _check();
    }

    function expire(uint256 blocks) external {
        vm.roll(block.number + blocks % 80);
        EthML.CurrentRound memory r = ethml.getCurrentRound();
        if (r.roundId == 0) return;
        if (block.number > r.commitDeadline && r.commits < 5) ethml.expireRound(r.roundId, _committers(r.roundId));
        _check();
    }

    function expireQueued(uint256 seed) external {
        uint256 n = ethml.requestCount();
        for (uint256 k = 0; k < n; ++k) {
            uint256 id = (seed + k) % n + 1;
            if (ethml.requestStatus(id) != IEthML.Status.Queued) continue;
            try ethml.expireQueued(id, ethml.queuePosition(id)) {} catch {}
            break;
        }
        _check();
    }

    function cancel(uint256 seed) external {
        uint256 n = ethml.requestCount();
        for (uint256 k = 0; k < n; ++k) {
            uint256 id = (seed + k) % n + 1;
            (address requester,,, IEthML.Status status) = ethml.getRequest(id);
            if (status != IEthML.Status.Queued || requester != USER) continue;
            uint256 position = ethml.queuePosition(id);
            vm.prank(USER);
            ethml.cancelRequest(id, position);
            break;
        }
        _check();
    }

    function claim(uint256 minerSeed, uint256 amount) external {
        address miner = miners[minerSeed % 7];
        uint256 balance = ethml.minerBalance(miner);
        if (balance == 0) return;
        vm.prank(miner);
        ethml.claim(amount % balance + 1);
    }

    function fund(uint256 minerSeed, uint256 amount) external {
        address miner = miners[minerSeed % 7];
        vm.prank(miner);
        ethml.fund(amount % 3 ether);
    }

    function wait(uint256 secondsToWait) external {
        vm.warp(block.timestamp + secondsToWait % 60);
    }

    /// @dev Tips still held for open requests: the open round's and the queued ones.
    function openTips() external view returns (uint256 total) {
        uint256 n = ethml.requestCount();
        for (uint256 id = 1; id <= n; ++id) {
            IEthML.Status s = ethml.requestStatus(id);
            if (s == IEthML.Status.Queued || s == IEthML.Status.Current) total += tipOf[id];
        }
    }

    function _request(uint256 modelId, uint256 tip) internal override returns (uint256 id) {
        id = super._request(modelId, tip);
        tipOf[id] = tip;
    }

    /// @dev A closed request keeps the status and prediction it closed with.
    function _check() internal {
        uint256 n = ethml.requestCount();
        for (uint256 id = 1; id <= n; ++id) {
            (int256 prediction, IEthML.Status status,,) = ethml.getResult(id);
            if (uint8(status) < uint8(IEthML.Status.Finalized)) continue;
            if (firstStatus[id] == 0) {
                (firstStatus[id], firstPrediction[id]) = (uint8(status), prediction);
            } else if (firstStatus[id] != uint8(status) || firstPrediction[id] != prediction) {
                ++changedOutcomes;
            }
        }
    }
}

contract InvariantsTest {
    Handler internal handler;
    EthML internal ethml;
    EMLToken internal token;
    uint256 internal initialSupply;

    function setUp() public {
        handler = new Handler();
        (ethml, token) = handler.system();
        initialSupply = token.totalSupply();
    }

    function targetContracts() public view returns (address[] memory targets) {
        targets = new address[](1);
        targets[0] = address(handler);
    }

    function _minerBalances() internal view returns (uint256 total) {
        for (uint256 i = 0; i < 7; ++i) {
            total += ethml.minerBalance(handler.minerAt(i));
        }
    }

    /// @dev Conservation, bonds and burns included: the supply moves only by base rewards minted and
    /// bonds burned, and every EML the oracle holds is an open request's tip, a bond of the open round or
    /// a miner's balance.
    function invariant_tokens_are_conserved() public view {
        vm.assertEq(
            token.totalSupply(), initialSupply + ethml.totalRewardsIssued() - ethml.totalBurned(), "supply"
        );
        EthML.CurrentRound memory r = ethml.getCurrentRound();
        uint256 bonds = r.roundId == 0 ? 0 : r.commits * r.bond;
        vm.assertEq(
            token.balanceOf(address(ethml)),
            handler.openTips() + bonds + _minerBalances(),
            "held = open tips + open round's bonds + miner balances"
        );
    }

    function invariant_one_commitment_per_miner_per_round() public view {
        vm.assertEq(handler.doubleCommits(), 0, "no miner committed twice in a round");
        vm.assertTrue(ethml.getCurrentRound().commits <= 5, "five slots");
    }

    function invariant_a_request_is_answered_at_most_once() public view {
        vm.assertEq(handler.changedOutcomes(), 0, "a closed request keeps its outcome");
        RecordingConsumer consumer = handler.consumer();
        uint256 n = ethml.requestCount();
        for (uint256 id = 1; id <= n; ++id) {
            vm.assertTrue(consumer.calls(id) <= 1, "called back at most once");
        }
    }

    function invariant_no_request_is_lost() public view {
        uint256 n = ethml.requestCount();
        uint256 queued;
        uint256 current;
        for (uint256 id = 1; id <= n; ++id) {
            IEthML.Status s = ethml.requestStatus(id);
            vm.assertTrue(s != IEthML.Status.None, "every request id is known");
            if (s == IEthML.Status.Queued) ++queued;
            if (s == IEthML.Status.Current) ++current;
        }
        vm.assertEq(queued, ethml.pendingCount(), "every queued request is in the queue");
        EthML.CurrentRound memory r = ethml.getCurrentRound();
        vm.assertEq(current, r.requestIds.length, "the open round's requests are current");
        vm.assertTrue(current <= 3, "at most K in a round");
        if (r.roundId == 0) vm.assertEq(queued, 0, "idle only when the queue is empty");
    }

    function invariant_results_have_a_quorum() public view {
        uint256 n = ethml.requestCount();
        for (uint256 id = 1; id <= n; ++id) {
            (, IEthML.Status s, uint256 agreeing,) = ethml.getResult(id);
            if (s == IEthML.Status.Finalized || s == IEthML.Status.InvalidInput) {
                vm.assertTrue(agreeing >= 3 && agreeing <= 5, "a result needs three agreeing reveals");
            }
            if (s == IEthML.Status.NoConsensus) vm.assertTrue(agreeing < 3, "no consensus means below quorum");
        }
    }
}
