// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {EMLToken} from "../src/EMLToken.sol";
import {ModelRegistry} from "../src/ModelRegistry.sol";
import {TrainingBase} from "../src/TrainingBase.sol";
import {TrainingTasks} from "../src/TrainingTasks.sol";
import {vm} from "./Base.sol";
import {TrainingFixture} from "./TrainingFixture.sol";

/// @dev Random tasks run through every step by random actors: honest and dishonest votes, reports,
/// no-shows, stakes coming and going, time and blocks passing. Checks the slashes of every settlement
/// against its own reading of the votes.
contract TrainingHandler is TrainingFixture {
    uint256[] public ids;
    uint256[] internal open; // the ids not settled yet
    mapping(uint256 => uint256) public settlements;
    uint256 public burned;
    uint256 public unexplainedSlashes; // a stake lost without a clear majority against it, or the reverse
    uint256 public settledCount;
    mapping(TrainingBase.Status => uint256) public outcomes;
    uint256 public stakesLost; // seated validators that lost stake at a settlement
    string[3] internal models = [MODEL, JUNK, "bafkreimodelmid"];
    /// @dev Test-set scores of the three models; junk fails its checks (its claim never reproduces).
    uint32[3] internal truth = [uint32(900_000), 0, 600_000];
    mapping(uint256 => mapping(address => uint256)) internal modelOf; // task => trainer => index + 1
    mapping(uint256 => mapping(address => uint256)) internal claimOf;

    constructor() {
        _setUpTraining();
        TrainingBase.Parameters memory p = _params();
        p.revealPeriod = 10 minutes;
        vm.prank(ADMIN);
        tasks.setParameters(p);
    }

    function system() external view returns (TrainingTasks, EMLToken, ModelRegistry) {
        return (tasks, token, registry);
    }

    function taskIds() external view returns (uint256[] memory) {
        return ids;
    }

    /// @dev Everyone that may hold a stake.
    function stakers() external view returns (address[] memory all) {
        all = new address[](4 + 7 + 3);
        for (uint256 i; i < 4; ++i) {
            all[i] = trainers[i];
        }
        for (uint256 i; i < 7; ++i) {
            all[4 + i] = validators[i];
        }
        (all[11], all[12], all[13]) = (requester, spares[0], spares[1]);
    }

    enum Phase {
        Any,
        Commit,
        RevealSubmission,
        RevealTest,
        Draw,
        Panel
    }

    /// @dev Mostly an open task in the phase the action needs (so tasks get through their steps), now and
    /// then any task (so refusals are exercised too).
    function _pick(uint256 seed, Phase phase) internal view returns (uint256) {
        seed = uint256(keccak256(abi.encode(seed))); // the fuzzer favours 0 and other edges
        if (seed % 8 == 0 || open.length == 0) return ids[seed % ids.length];
        for (uint256 k; k < open.length; ++k) {
            uint256 id = open[(seed % open.length + k) % open.length];
            if (_inPhase(_task(id), phase)) return id;
        }
        return open[seed % open.length];
    }

    function _inPhase(TrainingBase.Task memory t, Phase phase) internal view returns (bool) {
        uint256 now_ = block.timestamp;
        if (phase == Phase.Commit) return now_ <= t.submitDeadline;
        if (phase == Phase.RevealSubmission) return now_ > t.submitDeadline && now_ <= t.revealDeadline;
        if (phase == Phase.RevealTest) return !t.testRevealed && now_ > t.revealDeadline && now_ <= t.testDeadline;
        if (phase == Phase.Draw) return t.drawBlock != 0;
        if (phase == Phase.Panel) return t.round > 0;
        return true;
    }

    /// @dev Model `m` as trained for task `id` (honest artifacts differ between tasks).
    function _cid(uint256 id, uint256 m) internal view returns (string memory) {
        return string.concat(models[m], vm.toString(id));
    }

    function _trainer(uint256 i) internal view returns (address) {
        return i % 5 == 4 ? spares[0] : trainers[i % 4];
    }

    // ------------------------------------------------------------- actions

    function create(uint8 validations, uint32 minScore, uint16 submitPeriod, uint16 scorePeriod) external {
        TrainingTasks.Terms memory terms = _terms(uint8(1 + 2 * (uint256(validations) % 3)), minScore % 800_001);
        terms.submitPeriod = uint32(600 + uint256(submitPeriod) % 600);
        terms.scorePeriod = uint32(600 + uint256(scorePeriod) % 600);
        if (open.length >= 4) return; // a few at a time, so each gets through its steps
        vm.prank(requester);
        uint256 id = tasks.createTask(terms);
        ids.push(id);
        open.push(id);
    }

    /// @dev The first trainer from `trainer` on that has not committed to the task commits.
    function commit(uint256 seed, uint8 trainer, uint8 model, uint32 claim) external {
        if (ids.length == 0) return;
        uint256 id = _pick(seed, Phase.Commit);
        for (uint256 k; k < 5; ++k) {
            address who = _trainer(uint256(trainer) + k);
            if (modelOf[id][who] != 0) continue;
            uint256 c = _task(id).minScore + uint256(claim) % 200_000;
            vm.prank(who);
            try tasks.commitSubmission(id, _commitment(id, who, _cid(id, model % 3), c)) {
                modelOf[id][who] = model % 3 + 1;
                claimOf[id][who] = c;
                return;
            } catch {}
        }
    }

    /// @dev The first committed, unrevealed trainer from `trainer` on reveals.
    function revealSubmission(uint256 seed, uint8 trainer) external {
        if (ids.length == 0) return;
        uint256 id = _pick(seed, Phase.RevealSubmission);
        for (uint256 k; k < 5; ++k) {
            address who = _trainer(uint256(trainer) + k);
            uint256 index = tasks.submissionOf(id, who);
            if (index == 0 || tasks.getSubmission(id, index - 1).revealed) continue;
            string memory cid = _cid(id, modelOf[id][who] - 1);
            vm.prank(who);
            try tasks.revealSubmission(id, cid, _sha(cid), claimOf[id][who], _salt(who, id)) {} catch {}
            return;
        }
    }

    function revealTest(uint256 seed) external {
        if (ids.length == 0) return;
        vm.prank(requester);
        try tasks.revealTestSet(_pick(seed, Phase.RevealTest), TEST_CID, TEST_SALT) {} catch {}
    }

    function draw(uint256 seed) external {
        if (ids.length == 0) return;
        uint256 id = _pick(seed, Phase.Draw);
        uint256 drawBlock = _task(id).drawBlock;
        if (drawBlock == 0) return;
        if (block.number <= drawBlock) vm.roll(drawBlock + 1);
        if (block.number - drawBlock <= 256) vm.setBlockhash(drawBlock, keccak256(abi.encode(seed)));
        try panel.drawPanel(id) {} catch {}
    }

    /// @dev Each drawn, uncommitted validator commits (once, at its first seat), with a mode from `modes`
    /// (3 bits a seat): 0-3 honest (the test-set scores, or on every fourth task, whose test set is bad,
    /// and on a task whose test set was never revealed, an unusable report with the holdout scores); 4
    /// random scores; 5 1.0 for all; 6 0 for all; 7 a false unusable report. One validator in eight of
    /// each task never commits, one in eight never reveals. Honest votes are 0 for junk (it fails its
    /// checks); holdout votes are the claims of the others (they reproduce).
    function commitVotes(uint256 seed, uint32 modes) external {
        if (ids.length == 0) return;
        uint256 id = _pick(seed, Phase.Panel);
        uint256 n = _task(id).validations;
        for (uint256 i; i < n; ++i) {
            TrainingBase.Seat memory st = panel.getSeat(id, i);
            if (st.state != TrainingBase.SeatState.Drawn || panel.seatOf(id, st.validator) != i + 1) continue;
            if (_temper(id, st.validator) == 0) continue;
            _commitBallot(id, st.validator, seed, (modes >> (3 * i)) & 7);
        }
    }

    /// @dev 0: never commits; 1: commits, never reveals; else does its part.
    function _temper(uint256 id, address validator) internal pure returns (uint256) {
        return uint256(keccak256(abi.encode(id, validator, "temper"))) % 8;
    }

    function _commitBallot(uint256 id, address v, uint256 seed, uint256 mode) internal {
        TrainingBase.Task memory t = _task(id);
        if (mode < 4 && (id % 4 == 0 || !t.testRevealed)) mode = 7;
        uint32[] memory scores = new uint32[](t.submissions);
        for (uint256 i; i < scores.length; ++i) {
            address trainer = tasks.getSubmission(id, i).trainer;
            uint256 m = modelOf[id][trainer];
            if (mode < 4) scores[i] = m == 0 ? 0 : truth[m - 1];
            else if (mode == 4) scores[i] = uint32(uint256(keccak256(abi.encode(seed, i))) % 1_000_001);
            else if (mode == 5) scores[i] = 1_000_000;
            else if (mode == 7) scores[i] = m == 0 || m == 2 ? 0 : uint32(claimOf[id][trainer]);
        }
        ballots[id][v] = Ballot(mode == 7, scores);
        vm.prank(v);
        try panel.commitScores(id, keccak256(abi.encode(id, v, mode == 7, scores, _voteSalt(id, v)))) {} catch {}
    }

    /// @dev Each committed validator reveals (but the silent ones).
    function revealVotes(uint256 seed) external {
        if (ids.length == 0) return;
        uint256 id = _pick(seed, Phase.Panel);
        uint256 n = _task(id).validations;
        for (uint256 i; i < n; ++i) {
            TrainingBase.Seat memory st = panel.getSeat(id, i);
            if (st.state != TrainingBase.SeatState.Committed || panel.seatOf(id, st.validator) != i + 1) continue;
            if (_temper(id, st.validator) == 1) continue;
            Ballot memory b = ballots[id][st.validator];
            vm.prank(st.validator);
            try panel.revealScores(id, b.unusable, b.scores, _voteSalt(id, st.validator)) {} catch {}
        }
    }

    function replaceNoShows(uint256 seed) external {
        if (ids.length == 0) return;
        try panel.replaceNoShows(_pick(seed, Phase.Any)) {} catch {}
    }

    function finalize(uint256 seed) external {
        if (ids.length == 0) return;
        uint256 id = _pick(seed, Phase.Any);
        uint256 n = _task(id).validations;
        Before memory b;
        b.stake = new uint256[](n);
        b.locked = new uint256[](n);
        for (uint256 i; i < n; ++i) {
            address v = panel.getSeat(id, i).validator;
            if (v == address(0)) continue;
            b.stake[i] = _validatorStake(v);
            b.locked[i] = panel.memberOf(id, v).locked;
        }
        try panel.finalizeTask(id) {
            if (_task(id).status == TrainingBase.Status.Open) return; // an abandoned task's check began
            ++settlements[id];
            ++settledCount;
            for (uint256 k; k < open.length; ++k) {
                if (open[k] != id) continue;
                open[k] = open[open.length - 1];
                open.pop();
                break;
            }
            ++outcomes[_task(id).status];
            _checkSlashes(id, b);
        } catch {}
    }

    function retryRegistration(uint256 seed) external {
        if (ids.length == 0) return;
        try panel.retryRegistration(_pick(seed, Phase.Any)) {} catch {}
    }

    function stake(uint8 who, uint8 role, uint96 amount) external {
        address[14] memory all = _all();
        address a = all[who % 14];
        uint256 value = uint256(amount) % (50 ether) + 1;
        if (token.balanceOf(a) < value) return;
        vm.startPrank(a);
        token.approve(address(tasks), type(uint256).max);
        try tasks.stake(TrainingBase.Role(role % 2), value) {} catch {}
        vm.stopPrank();
    }

    /// @dev Now and then (one call in four acts) an account starts leaving or withdraws.
    function leave(uint8 who, uint8 role, bool withdraw) external {
        if (uint256(keccak256(abi.encode(who, role, withdraw))) % 4 != 0) return;
        address a = _all()[who % 14];
        vm.prank(a);
        if (withdraw) {
            try tasks.withdrawStake(TrainingBase.Role(role % 2)) {} catch {}
        } else {
            try tasks.requestUnstake(TrainingBase.Role(role % 2)) {} catch {}
        }
    }

    /// @dev Validators step out now and then (one call in four) and back in otherwise.
    function setActive(uint8 who, bool active) external {
        if (!active && uint256(keccak256(abi.encode(who))) % 4 != 0) active = true;
        vm.prank(_all()[who % 14]);
        try tasks.setActive(active) {} catch {}
    }

    /// @dev Jump just past the next deadline of an open task (as the keepers of a real deployment act on
    /// deadlines), or a little less far.
    function advance(uint256 seed, bool short) external {
        if (open.length == 0) return;
        TrainingBase.Task memory t = _task(open[seed % open.length]);
        uint256 target;
        uint40[4] memory deadlines = [t.submitDeadline, t.revealDeadline, t.testDeadline, t.scoreDeadline];
        for (uint256 i; i < 4 && target == 0; ++i) {
            if (deadlines[i] >= block.timestamp) target = deadlines[i] + 1;
        }
        if (target == 0 && t.round > 0) target = uint256(t.scoreDeadline) + t.rules.revealPeriod + 1;
        if (target <= block.timestamp) return;
        vm.warp(short ? block.timestamp + (target - block.timestamp) / 2 : target);
        vm.roll(block.number + 1);
    }

    function wait(uint32 secondsToWait, uint8 blocks) external {
        vm.warp(block.timestamp + uint256(secondsToWait) % 10 minutes);
        vm.roll(block.number + uint256(blocks) % 8);
    }

    function burn() external {
        burned += tasks.pendingBurn();
        panel.burnPenalties();
    }

    function _all() internal view returns (address[14] memory all) {
        for (uint256 i; i < 4; ++i) {
            all[i] = trainers[i];
        }
        for (uint256 i; i < 7; ++i) {
            all[4 + i] = validators[i];
        }
        (all[11], all[12], all[13]) = (requester, spares[0], spares[1]);
    }

    // ------------------------------------------------------------- the independent reading of a verdict

    /// @dev Each seat's validator's stake and lock on the task before the settlement.
    struct Before {
        uint256[] stake;
        uint256[] locked;
    }

    struct Reading {
        uint256 m;
        uint256[3] count; // revealed seats by kind: 1 holdout (unusable, or the test set never revealed), 2 test
        uint256 judge; // the kind with a clear majority (0: none)
        uint256 tolerance;
    }

    /// @dev Each seated validator's loss (once, at its first seat) must match: never committed (the
    /// no-show part of its lock), committed and never revealed or outvoted by a clear majority (M of the
    /// panel's seats; its whole lock); and nobody else loses stake.
    function _checkSlashes(uint256 id, Before memory b) internal {
        TrainingBase.Task memory t = _task(id);
        Reading memory r;
        r.m = uint256(t.seated) / 2 + 1; // of the seats filled
        r.tolerance = t.rules.scoreTolerance;
        uint256 n = t.validations;
        TrainingBase.Seat[] memory seats = new TrainingBase.Seat[](n);
        uint8[] memory kind = new uint8[](n);
        for (uint256 i; i < n; ++i) {
            seats[i] = panel.getSeat(id, i);
            if (seats[i].validator == address(0) || seats[i].state != TrainingBase.SeatState.Revealed) continue;
            kind[i] = !t.testRevealed || seats[i].unusable ? 1 : 2;
            ++r.count[kind[i]];
        }
        if (r.count[1] >= r.m) r.judge = 1;
        else if (r.count[2] >= r.m) r.judge = 2;
        for (uint256 i; i < n; ++i) {
            address v = seats[i].validator;
            if (v == address(0) || panel.seatOf(id, v) != i + 1) continue;
            bool lost = _validatorStake(v) < b.stake[i];
            if (lost) ++stakesLost;
            uint256 cut;
            if (seats[i].state == TrainingBase.SeatState.Drawn) {
                cut = t.rules.slashBps == 0 ? 0 : b.locked[i] * t.rules.noShowBps / t.rules.slashBps;
            } else if (seats[i].state == TrainingBase.SeatState.Committed) {
                cut = b.locked[i];
            } else if (r.judge != 0 && (kind[i] != r.judge || _outvoted(id, t, seats, kind, i, r))) {
                cut = b.locked[i];
            }
            if (lost != (cut > 0) || b.stake[i] - _validatorStake(v) != cut) ++unexplainedSlashes;
        }
    }

    function _outvoted(
        uint256 id,
        TrainingBase.Task memory t,
        TrainingBase.Seat[] memory seats,
        uint8[] memory kind,
        uint256 who,
        Reading memory r
    ) internal view returns (bool) {
        for (uint256 j; j < t.submissions; ++j) {
            if (!tasks.getSubmission(id, j).revealed) continue;
            uint32[] memory votes = new uint32[](r.count[r.judge]);
            uint256 k;
            for (uint256 i; i < seats.length; ++i) {
                if (kind[i] == r.judge) votes[k++] = seats[i].scores[j];
            }
            // sort descending, take the m-th
            for (uint256 a; a < votes.length; ++a) {
                for (uint256 c = a + 1; c < votes.length; ++c) {
                    if (votes[c] > votes[a]) (votes[a], votes[c]) = (votes[c], votes[a]);
                }
            }
            uint256 decided = votes[r.m - 1];
            uint256 agreeing;
            for (uint256 i; i < votes.length; ++i) {
                if (_within(votes[i], decided, r.tolerance)) ++agreeing;
            }
            if (agreeing >= r.m && !_within(seats[who].scores[j], decided, r.tolerance)) return true;
        }
        return false;
    }

    function _within(uint256 a, uint256 b, uint256 tolerance) internal pure returns (bool) {
        return a > b ? a - b <= tolerance : b - a <= tolerance;
    }
}
