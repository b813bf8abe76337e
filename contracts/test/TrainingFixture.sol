// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {EMLToken} from "../src/EMLToken.sol";
import {ModelRegistry} from "../src/ModelRegistry.sol";
import {TrainingBase} from "../src/TrainingBase.sol";
import {TrainingTasks} from "../src/TrainingTasks.sol";
import {TrainingValidation} from "../src/TrainingValidation.sol";
import {vm} from "./Base.sol";

/// @dev EMLToken, ModelRegistry and TrainingTasks (holding the registrar role) deployed directly, a
/// requester with a signing key, four staked trainers, seven staked validators, and one helper per step
/// of a task, each acting as the account that would send it.
abstract contract TrainingFixture {
    EMLToken internal token;
    ModelRegistry internal registry;
    TrainingTasks internal tasks;
    /// @dev The same address as `tasks`, typed for the functions the validation half implements.
    TrainingValidation internal panel;

    address internal constant ADMIN = address(0xAD);
    uint256 internal constant REQUESTER_KEY = 0xBEEF;
    address internal requester;
    address[4] internal trainers = [address(0x7001), address(0x7002), address(0x7003), address(0x7004)];
    address[7] internal validators =
        [address(0x8001), address(0x8002), address(0x8003), address(0x8004), address(0x8005), address(0x8006), address(0x8007)];
    /// @dev Accounts with EML and nothing else, for sybils and outsiders.
    address[24] internal spares;

    uint256 internal constant FUNDS = 1_000 ether;
    uint256 internal constant STAKE = 100 ether;
    uint96 internal constant REWARD = 100 ether;
    uint32 internal constant PERIOD = 1 days;
    uint32 internal constant SCORE_PERIOD = 1 hours;
    uint32 internal constant REVEAL = 1 hours;
    string internal constant TEST_CID = "bafkreitestset";
    bytes32 internal constant TEST_SALT = keccak256("test salt");
    string internal constant MODEL = "bafkreimodelgood";
    string internal constant JUNK = "bafkreimodeljunk";
    uint256 internal initialSupply;

    struct Ballot {
        bool unusable;
        uint32[] scores;
    }

    mapping(uint256 => mapping(address => Ballot)) internal ballots;

    function _setUpTraining() internal {
        (address[] memory holders, uint256[] memory amounts) = _accounts();
        _deployMarket(new EMLToken(holders, amounts));
        for (uint256 i; i < 4; ++i) {
            _stake(trainers[i], TrainingBase.Role.Trainer, STAKE);
        }
        _stakeValidators();
    }

    /// @dev The requester's and the spares' addresses, and what the token mints to each account: the
    /// requester 100 x FUNDS, every trainer, validator and spare FUNDS.
    function _accounts() internal returns (address[] memory holders, uint256[] memory amounts) {
        requester = vm.addr(REQUESTER_KEY);
        holders = new address[](1 + 4 + 7 + 24);
        amounts = new uint256[](holders.length);
        holders[0] = requester;
        amounts[0] = 100 * FUNDS;
        for (uint256 i; i < 4; ++i) {
            (holders[1 + i], amounts[1 + i]) = (trainers[i], FUNDS);
        }
        for (uint256 i; i < 7; ++i) {
            (holders[5 + i], amounts[5 + i]) = (validators[i], FUNDS);
        }
        for (uint256 i; i < 24; ++i) {
            spares[i] = address(uint160(0x9000 + i));
            (holders[12 + i], amounts[12 + i]) = (spares[i], FUNDS);
        }
    }

    /// @dev The registry and the market on `token_` (minted by `_accounts`), the market holding the
    /// registrar role, the requester's allowance to it unlimited.
    function _deployMarket(EMLToken token_) internal {
        token = token_;
        initialSupply = token.totalSupply();
        registry = new ModelRegistry(ADMIN);
        tasks = _newTasks(ADMIN);
        panel = TrainingValidation(address(tasks));
        bytes32 registrar = registry.REGISTRAR_ROLE();
        vm.prank(ADMIN);
        registry.grantRole(registrar, address(tasks));
        vm.prank(requester);
        token.approve(address(tasks), type(uint256).max);
    }

    /// @dev Every validator staked, then a block mined so that the stakes count for the draw.
    function _stakeValidators() internal {
        for (uint256 i; i < 7; ++i) {
            _stake(validators[i], TrainingBase.Role.Validator, STAKE);
        }
        vm.roll(block.number + 1);
    }

    /// @dev The market as a deployment makes it: the validation half first, then TrainingTasks.
    function _newTasks(address admin) internal returns (TrainingTasks) {
        TrainingValidation half = new TrainingValidation(token, registry);
        return new TrainingTasks(token, registry, admin, _params(), address(half));
    }

    function _params() internal pure returns (TrainingBase.Parameters memory) {
        return TrainingBase.Parameters({
            minTrainerStake: uint128(STAKE),
            minValidatorStake: uint128(STAKE),
            minBond: 1 ether,
            minRegistrationReward: 10 ether,
            unstakeDelay: 1 days,
            minPeriod: 10,
            revealPeriod: REVEAL,
            registrationPeriod: 1 days,
            scoreTolerance: 20_000,
            claimSlack: 100_000,
            drawDelayBlocks: 2,
            validatorShareBps: 2_000,
            slashBps: 1_000,
            noShowBps: 200,
            bondBps: 1_000,
            registrationsPerPeriod: 3,
            minSeatReward: 1 ether,
            maxPeriod: 7 days
        });
    }

    function _stake(address who, TrainingBase.Role role, uint256 amount) internal {
        vm.startPrank(who);
        token.approve(address(tasks), type(uint256).max);
        tasks.stake(role, amount);
        vm.stopPrank();
    }

    // ------------------------------------------------------------- creation

    function _terms(uint8 validations, uint32 minScore) internal view returns (TrainingTasks.Terms memory) {
        return TrainingTasks.Terms({
            datasetCid: "bafkreidataset",
            specCid: "bafkreispec",
            testSetCommitment: keccak256(abi.encode(TEST_CID, TEST_SALT)),
            reward: REWARD,
            submitPeriod: PERIOD,
            scorePeriod: SCORE_PERIOD,
            validations: validations,
            minScore: minScore,
            kind: ModelRegistry.ModelKind.Classification,
            decimals: 0,
            featureCount: 13,
            parametersVersion: tasks.parametersVersion()
        });
    }

    function _create(uint8 validations, uint32 minScore) internal returns (uint256 id) {
        TrainingTasks.Terms memory terms = _terms(validations, minScore);
        vm.prank(requester);
        id = tasks.createTask(terms);
    }

    function _task(uint256 id) internal view returns (TrainingBase.Task memory) {
        return panel.getTask(id);
    }

    // ------------------------------------------------------------- submissions

    function _salt(address account, uint256 id) internal pure returns (bytes32) {
        return keccak256(abi.encode("salt", account, id));
    }

    function _sha(string memory cid) internal pure returns (bytes32) {
        return keccak256(bytes(cid));
    }

    function _commitment(uint256 id, address trainer, string memory cid, uint256 claim)
        internal
        pure
        returns (bytes32)
    {
        return keccak256(abi.encode(id, trainer, cid, _sha(cid), claim, _salt(trainer, id)));
    }

    function _commit(uint256 id, address trainer, string memory cid, uint256 claim) internal {
        vm.prank(trainer);
        tasks.commitSubmission(id, _commitment(id, trainer, cid, claim));
    }

    function _reveal(uint256 id, address trainer, string memory cid, uint256 claim) internal {
        vm.prank(trainer);
        tasks.revealSubmission(id, cid, _sha(cid), claim, _salt(trainer, id));
    }

    function _toRevealWindow(uint256 id) internal {
        vm.warp(_task(id).submitDeadline + 1);
    }

    function _toTestWindow(uint256 id) internal {
        vm.warp(_task(id).revealDeadline + 1);
    }

    function _revealTest(uint256 id) internal {
        vm.prank(requester);
        tasks.revealTestSet(id, TEST_CID, TEST_SALT);
    }

    /// @dev Commit from each trainer, reveal them all, reveal the test set.
    function _submitAll(uint256 id, address[] memory who, string[] memory cids, uint256[] memory claims) internal {
        for (uint256 i; i < who.length; ++i) {
            _commit(id, who[i], cids[i], claims[i]);
        }
        _toRevealWindow(id);
        for (uint256 i; i < who.length; ++i) {
            _reveal(id, who[i], cids[i], claims[i]);
        }
        _toTestWindow(id);
        _revealTest(id);
    }

    // ------------------------------------------------------------- the panel

    /// @dev Mine past the fixed block, give it `seed` as its hash, draw.
    function _draw(uint256 id, bytes32 seed) internal {
        uint256 drawBlock = _task(id).drawBlock;
        if (block.number <= drawBlock) vm.roll(drawBlock + 1);
        vm.setBlockhash(drawBlock, seed);
        panel.drawPanel(id);
    }

    function _seated(uint256 id) internal view returns (address[] memory seated) {
        uint256 n = _task(id).validations;
        seated = new address[](n);
        for (uint256 i; i < n; ++i) {
            seated[i] = panel.getSeat(id, i).validator;
        }
    }

    function _isSeated(uint256 id, address who) internal view returns (bool) {
        return panel.seatOf(id, who) != 0;
    }

    /// @dev Try seeds until the drawn panel satisfies `wanted` (rolled back otherwise); returns the seed.
    function _drawUntil(uint256 id, function(uint256) internal view returns (bool) wanted) internal returns (bytes32) {
        for (uint256 i; i < 500; ++i) {
            bytes32 seed = keccak256(abi.encode("seed", i));
            uint256 snap = vm.snapshotState();
            _draw(id, seed);
            if (wanted(id)) return seed;
            vm.revertToState(snap);
        }
        revert("no seed gives the panel wanted");
    }

    function _voteSalt(uint256 id, address validator) internal pure returns (bytes32) {
        return keccak256(abi.encode("vote", id, validator));
    }

    function _commitVote(uint256 id, address validator, bool unusable, uint32[] memory scores) internal {
        ballots[id][validator] = Ballot(unusable, scores);
        vm.prank(validator);
        panel.commitScores(id, keccak256(abi.encode(id, validator, unusable, scores, _voteSalt(id, validator))));
    }

    function _revealVote(uint256 id, address validator) internal {
        Ballot memory b = ballots[id][validator];
        vm.prank(validator);
        panel.revealScores(id, b.unusable, b.scores, _voteSalt(id, validator));
    }

    /// @dev A model CID of its own for task `id`: honest artifacts differ between tasks (the spec's seed
    /// is the task id), and one revealed in a task cannot be revealed in a later one.
    function _model(uint256 id) internal pure returns (string memory) {
        return string.concat(MODEL, vm.toString(id));
    }

    function _scores(uint32 a) internal pure returns (uint32[] memory s) {
        s = new uint32[](1);
        s[0] = a;
    }

    function _scores(uint32 a, uint32 b) internal pure returns (uint32[] memory s) {
        s = new uint32[](2);
        (s[0], s[1]) = (a, b);
    }

    /// @dev Whether seat `i` is its validator's first seat (where its one ballot is kept).
    function _firstSeat(uint256 id, address[] memory seated, uint256 i) internal view returns (bool) {
        return seated[i] != address(0) && panel.seatOf(id, seated[i]) == i + 1;
    }

    /// @dev Every seated validator commits `scores` (with `unusable`: holdout scores for an unusable test
    /// set), once however many seats it holds, then all reveal.
    function _allVote(uint256 id, bool unusable, uint32[] memory scores) internal {
        address[] memory seated = _seated(id);
        for (uint256 i; i < seated.length; ++i) {
            if (_firstSeat(id, seated, i)) _commitVote(id, seated[i], unusable, scores);
        }
        for (uint256 i; i < seated.length; ++i) {
            if (_firstSeat(id, seated, i)) _revealVote(id, seated[i]);
        }
    }

    /// @dev Every seat a different validator (for tests that give each seat its own ballot).
    function _distinct(uint256 id) internal view returns (bool) {
        address[] memory seated = _seated(id);
        for (uint256 i; i < seated.length; ++i) {
            if (seated[i] == address(0) || !_firstSeat(id, seated, i)) return false;
        }
        return true;
    }

    /// @dev Draw a panel whose seats are all different validators (the draw is with replacement).
    function _drawDistinct(uint256 id) internal returns (bytes32) {
        return _drawUntil(id, _distinct);
    }

    function _finalize(uint256 id) internal {
        panel.finalizeTask(id);
    }

    function _afterScoreReveals(uint256 id) internal {
        TrainingBase.Task memory t = _task(id);
        vm.warp(uint256(t.scoreDeadline) + t.rules.revealPeriod + 1);
    }

    // ------------------------------------------------------------- reading

    function _stakeOf(address who, TrainingBase.Role role) internal view returns (TrainingBase.Stake memory) {
        return tasks.stakeOf(who, role);
    }

    function _validatorStake(address who) internal view returns (uint256) {
        return tasks.stakeOf(who, TrainingBase.Role.Validator).amount;
    }

    function _one(address a) internal pure returns (address[] memory r) {
        r = new address[](1);
        r[0] = a;
    }

    function _two(address a, address b) internal pure returns (address[] memory r) {
        r = new address[](2);
        (r[0], r[1]) = (a, b);
    }

    function _cids(string memory a) internal pure returns (string[] memory r) {
        r = new string[](1);
        r[0] = a;
    }

    function _cids(string memory a, string memory b) internal pure returns (string[] memory r) {
        r = new string[](2);
        (r[0], r[1]) = (a, b);
    }

    function _claims(uint256 a) internal pure returns (uint256[] memory r) {
        r = new uint256[](1);
        r[0] = a;
    }

    function _claims(uint256 a, uint256 b) internal pure returns (uint256[] memory r) {
        r = new uint256[](2);
        (r[0], r[1]) = (a, b);
    }
}
