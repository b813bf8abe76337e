// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {AccessControl} from "@openzeppelin/contracts/access/AccessControl.sol";
import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {IERC20Permit} from "@openzeppelin/contracts/token/ERC20/extensions/IERC20Permit.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {SignatureChecker} from "@openzeppelin/contracts/utils/cryptography/SignatureChecker.sol";
import {ModelRegistry} from "./ModelRegistry.sol";
import {TrainingBase} from "./TrainingBase.sol";
import {TrainingStakes} from "./TrainingStakes.sol";
import {TrainingViews} from "./TrainingViews.sol";

/// @title TrainingTasks: the training market.
/// @notice A requester escrows a reward for a model trained to a spec; staked trainers commit to their
/// models (each with a bond), then reveal them; the requester's test set, committed at creation, is
/// revealed in the contract's window; validators drawn by lot score every submission, committed then
/// revealed; the best submission a clear majority passes is paid and registered in the ModelRegistry.
/// docs/training.md has the state machine, every window, the randomness and the money.
/// @dev Holds the registry's REGISTRAR_ROLE. The admin (DEFAULT_ADMIN_ROLE, a TimelockController on
/// non-development deployments) changes parameters, within bounds, for tasks created afterwards (stake
/// minimums and the unstake delay apply at once) and may pause task creation and staking (PAUSER_ROLE);
/// it cannot change an open task's rules, an escrow, a stake or a bond (docs/training.md says what else).
/// The panel and settlement functions (drawPanel, commitScores, replaceNoShows, revealScores,
/// finalizeTask, retryRegistration, burnPenalties and their views) are TrainingValidation's
/// code, deployed beforehand and run by this contract's fallback in this contract's storage (see
/// TrainingBase); the shipped ABI has both.
contract TrainingTasks is AccessControl, TrainingStakes, TrainingViews {
    using SafeERC20 for IERC20;

    /// @notice A task's terms, as the requester signs them (EIP-712 TaskTerms, with requester, nonce
    /// and expiry). Periods are durations in seconds from the block that creates the task, so a relayed
    /// task keeps its windows whenever it lands before the signature's expiry. `parametersVersion` must
    /// be the contract's current one: terms made under other parameters are refused (ParametersChanged).
    struct Terms {
        string datasetCid;
        string specCid;
        bytes32 testSetCommitment; // keccak256(abi.encode(testCid, salt)), see commitmentFor
        uint96 reward;
        uint32 submitPeriod; // seconds for trainers to commit
        uint32 scorePeriod; // seconds for each drawn validator to commit its scores
        uint8 validations; // the panel's size: odd, 1..9
        uint32 minScore; // millionths
        ModelRegistry.ModelKind kind;
        uint8 decimals;
        uint16 featureCount;
        uint32 parametersVersion; // see parametersVersion()
    }

    /// @notice An EIP-2612 permit of the reward from the requester to this contract (deadline 0: none,
    /// the requester approved beforehand).
    struct Permit {
        uint256 deadline;
        uint8 v;
        bytes32 r;
        bytes32 s;
    }

    bytes32 public constant PAUSER_ROLE = keccak256("PAUSER_ROLE");
    /// @notice The least slashBps the admin may set: every seat puts something at stake.
    uint16 public constant MIN_SLASH_BPS = 100;
    bytes32 public constant TERMS_TYPEHASH = keccak256(
        "TaskTerms(address requester,string datasetCid,string specCid,bytes32 testSetCommitment,uint96 reward,"
        "uint32 submitPeriod,uint32 scorePeriod,uint8 validations,uint32 minScore,uint8 kind,uint8 decimals,"
        "uint16 featureCount,uint32 parametersVersion,uint256 nonce,uint256 expiry)"
    );
    bytes32 private constant DOMAIN_TYPEHASH =
        keccak256("EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)");
    bytes32 private constant NAME_HASH = keccak256("EthML TrainingTasks");
    bytes32 private constant VERSION_HASH = keccak256("1");

    bytes32 private immutable _cachedDomainSeparator;
    uint256 private immutable _cachedChainId;
    /// @notice The code of the panel and settlement functions, run here by delegatecall.
    address public immutable validation;

    event NonceUsed(address indexed requester, uint256 nonce);

    /// @param validation_ A TrainingValidation deployed with the same token and registry (its immutables
    /// are its code, so they must match): the second half of this contract's code.
    constructor(
        IERC20 token_,
        ModelRegistry registry_,
        address admin,
        Parameters memory params,
        address validation_
    ) TrainingBase(token_, registry_) {
        if (TrainingBase(validation_).token() != token_ || TrainingBase(validation_).registry() != registry_) {
            revert InvalidParameters("validation: other token/registry");
        }
        validation = validation_;
        _grantRole(DEFAULT_ADMIN_ROLE, admin);
        _grantRole(PAUSER_ROLE, admin);
        _setParameters(params);
        _cachedChainId = block.chainid;
        _cachedDomainSeparator = _buildDomainSeparator();
    }

    /// @dev Every other function is TrainingValidation's, run in this contract's storage.
    fallback() external {
        address target = validation;
        assembly ("memory-safe") {
            calldatacopy(0, 0, calldatasize())
            let ok := delegatecall(gas(), target, 0, calldatasize(), 0, 0)
            returndatacopy(0, 0, returndatasize())
            if iszero(ok) { revert(0, returndatasize()) }
            return(0, returndatasize())
        }
    }

    // ------------------------------------------------------------- admin

    /// @notice Parameters for tasks created from now on (see Parameters for the few that apply at once).
    function setParameters(Parameters calldata params) external onlyRole(DEFAULT_ADMIN_ROLE) {
        _setParameters(params);
    }

    function parameters() external view returns (Parameters memory) {
        return _params;
    }

    /// @notice Stop new tasks and new stakes; everything already open runs to its end.
    function pause() external onlyRole(PAUSER_ROLE) {
        _pause();
    }

    function unpause() external onlyRole(PAUSER_ROLE) {
        _unpause();
    }

    function _setParameters(Parameters memory p) private {
        if (p.minTrainerStake == 0 || p.minValidatorStake == 0) _refuse("a minimum stake is zero");
        if (p.unstakeDelay < MIN_UNSTAKE_DELAY || p.unstakeDelay > 30 days) {
            _refuse("unstakeDelay not 1..30 days");
        }
        if (p.minPeriod == 0 || p.minPeriod > p.maxPeriod) _refuse("not 0 < minPeriod <= maxPeriod");
        if (p.maxPeriod > MAX_PERIOD || p.revealPeriod > MAX_PERIOD || p.registrationPeriod > MAX_PERIOD) {
            _refuse("a period above 7 days");
        }
        if (p.revealPeriod == 0 || p.registrationPeriod == 0) _refuse("a period is zero");
        if (p.scoreTolerance > SCORE_SCALE || p.claimSlack > SCORE_SCALE) {
            _refuse("a score tolerance above 1.0");
        }
        if (p.drawDelayBlocks == 0 || p.drawDelayBlocks > 128) _refuse("drawDelayBlocks not 1..128");
        if (p.validatorShareBps == 0 || p.minSeatReward == 0) _refuse("validators unpaid");
        if (p.validatorShareBps > 5_000 || p.slashBps > 5_000) _refuse("a share above 50%");
        if (p.noShowBps > p.slashBps) _refuse("noShowBps above slashBps");
        if (p.slashBps < MIN_SLASH_BPS || p.noShowBps == 0) _refuse("slashBps below 1% or noShowBps 0");
        if (p.minBond == 0) _refuse("minBond is zero");
        if (p.bondBps > 10_000) _refuse("bondBps above 100%");
        _params = p;
        parametersVersion += 1;
        emit ParametersUpdated(p);
    }

    /// @dev Revert InvalidParameters(reason), `reason` being the text left-aligned in the word (a reason
    /// over 32 bytes does not compile): one revert path for every parameter check, where a revert with its
    /// own string literal each costs ~250 bytes more code (EIP-170).
    function _refuse(bytes32 reason) private pure {
        uint256 length;
        while (length < 32 && reason[length] != 0) ++length;
        bytes memory text = abi.encodePacked(reason);
        assembly ("memory-safe") {
            mstore(text, length)
        }
        revert InvalidParameters(string(text));
    }

    // ------------------------------------------------------------- tasks

    /// @notice Create a task paid by the caller (who approved the reward beforehand).
    function createTask(Terms calldata terms) external whenNotPaused nonReentrant returns (uint256 taskId) {
        _checkVersion(terms);
        taskId = _create(terms, msg.sender);
    }

    /// @notice Create a task on terms `requester` signed (EIP-712, see termsDigest), paid by `requester`:
    /// anyone may relay it, nobody can change a term. `permit` (optional) approves the reward first; if
    /// it fails (already used, say) the requester's allowance must still cover the reward.
    function createTaskFor(
        Terms calldata terms,
        address requester,
        uint256 expiry,
        bytes calldata signature,
        Permit calldata permit
    ) external whenNotPaused nonReentrant returns (uint256 taskId) {
        if (block.timestamp > expiry) revert SignatureExpired(expiry);
        _checkVersion(terms);
        uint256 nonce = _nonces[requester]++;
        if (!SignatureChecker.isValidSignatureNow(requester, termsDigest(terms, requester, nonce, expiry), signature)) {
            revert InvalidSignature(requester);
        }
        if (permit.deadline != 0) {
            try IERC20Permit(address(token)).permit(
                requester, address(this), terms.reward, permit.deadline, permit.v, permit.r, permit.s
            ) {} catch {}
        }
        uint256 allowance = token.allowance(requester, address(this));
        if (allowance < terms.reward) revert EscrowNotApproved(requester, allowance, terms.reward);
        taskId = _create(terms, requester);
    }

    /// @notice Void the signed terms that carry the caller's current nonce (the next a relayer could
    /// land): the nonce moves on by one. Terms signed with later nonces stay valid and become the next in
    /// line; void each (one call per nonce) or let them expire.
    function useNonce() external {
        emit NonceUsed(msg.sender, _nonces[msg.sender]++);
    }

    /// @notice The nonce the next terms `requester` signs must carry.
    function nonces(address requester) external view returns (uint256) {
        return _nonces[requester];
    }

    /// @notice A trainer's hidden submission: keccak256(abi.encode(taskId, trainer, modelCid,
    /// artifactSha256, claim, salt)) (see submissionCommitment), before the submission deadline. Locks
    /// the task's bond out of the trainer's free stake.
    function commitSubmission(uint256 taskId, bytes32 commitment) external {
        Task storage t = _openTask(taskId);
        _checkWindow(taskId, Step.CommitSubmission, 0, t.submitDeadline);
        if (msg.sender == t.requester) revert RequesterCannotSubmit(taskId);
        if (!isStaked(msg.sender, Role.Trainer)) revert NotStaked(msg.sender, Role.Trainer);
        if (_submissionOf[taskId][msg.sender].index != 0) revert AlreadySubmitted(taskId, msg.sender);
        uint256 id = t.submissions;
        if (id >= MAX_SUBMISSIONS) revert TooManySubmissions(taskId, MAX_SUBMISSIONS);
        _lockBond(msg.sender, t.rules.bond);
        t.submissions = uint8(id + 1);
        _submissionOf[taskId][msg.sender] = Entry(uint8(id + 1), uint40(block.timestamp));
        Submission storage s = _submissions[taskId][id];
        s.trainer = msg.sender;
        s.commitment = commitment;
        emit SubmissionCommitted(taskId, id, msg.sender, commitment);
    }

    /// @notice Open the caller's commitment, after the submission deadline and until the reveal deadline.
    /// The claim (the holdout score, millionths) must reach the task's minimum and the model must fit the
    /// registry (ModelRegistry.checkModel), so an accepted model can always be registered. An artifact
    /// already revealed in another task before this commitment was made could be a copy: the reveal is
    /// accepted (so a decoy reveal of a predictable artifact burns no honest bond) but marked
    /// (RevealedElsewhereFirst, revealedElsewhere), and the submission is never accepted nor paid.
    /// Trainers check firstRevealOf(artifactSha256) before committing.
    function revealSubmission(
        uint256 taskId,
        string calldata modelCid,
        bytes32 artifactSha256,
        uint256 claim,
        bytes32 salt
    ) external {
        Task storage t = _openTask(taskId);
        _checkWindow(taskId, Step.RevealSubmission, t.submitDeadline, t.revealDeadline);
        Entry memory entry = _submissionOf[taskId][msg.sender];
        uint256 index = entry.index;
        if (index == 0) revert NoCommitment(taskId, msg.sender);
        Submission storage s = _submissions[taskId][index - 1];
        if (s.revealed) revert AlreadyRevealed(taskId, msg.sender);
        if (submissionCommitment(taskId, msg.sender, modelCid, artifactSha256, claim, salt) != s.commitment) {
            revert CommitmentMismatch(taskId, msg.sender);
        }
        if (claim > SCORE_SCALE) revert ScoreOutOfRange(claim);
        if (claim < t.minScore) revert ClaimBelowMinimum(taskId, claim, t.minScore);
        registry.checkModel(modelCid, t.kind, t.decimals, t.featureCount);
        FirstReveal memory first = _firstReveal[artifactSha256];
        if (first.taskId == 0) {
            _firstReveal[artifactSha256] = FirstReveal(uint64(taskId), uint40(block.timestamp));
        } else if (first.taskId != taskId && first.revealedAt <= entry.committedAt) {
            _revealedElsewhere[taskId] |= 1 << (index - 1);
            emit RevealedElsewhereFirst(taskId, index - 1, artifactSha256, first.taskId);
        }
        s.revealed = true;
        s.claim = uint32(claim);
        s.artifactSha256 = artifactSha256;
        s.modelCid = modelCid;
        t.revealed += 1;
        emit SubmissionRevealed(taskId, index - 1, msg.sender, modelCid, artifactSha256, claim);
    }

    /// @notice Reveal the test set (anyone holding the preimage: the requester, its relayer) after the
    /// submission reveals and before the test deadline; fixes the block that draws the validators.
    function revealTestSet(uint256 taskId, string calldata testCid, bytes32 salt) external {
        Task storage t = _openTask(taskId);
        _checkWindow(taskId, Step.RevealTestSet, t.revealDeadline, t.testDeadline);
        if (t.testRevealed) revert AlreadyRevealed(taskId, msg.sender);
        if (t.revealed == 0) revert NoSubmissions(taskId);
        if (commitmentFor(testCid, salt) != t.testSetCommitment) revert TestSetMismatch(taskId);
        t.testRevealed = true;
        t.testCid = testCid;
        emit TestSetRevealed(taskId, testCid);
        _fixDraw(taskId, t);
    }

    // ------------------------------------------------------------- views

    // solhint-disable-next-line func-name-mixedcase
    function DOMAIN_SEPARATOR() public view returns (bytes32) {
        return block.chainid == _cachedChainId ? _cachedDomainSeparator : _buildDomainSeparator();
    }

    /// @notice The EIP-712 digest a requester signs for `terms` (domain "EthML TrainingTasks", version "1").
    function termsDigest(Terms calldata terms, address requester, uint256 nonce, uint256 expiry)
        public
        view
        returns (bytes32)
    {
        bytes memory head = abi.encode(
            TERMS_TYPEHASH,
            requester,
            keccak256(bytes(terms.datasetCid)),
            keccak256(bytes(terms.specCid)),
            terms.testSetCommitment,
            terms.reward,
            terms.submitPeriod,
            terms.scorePeriod
        );
        bytes memory tail = abi.encode(
            terms.validations,
            terms.minScore,
            uint8(terms.kind),
            terms.decimals,
            terms.featureCount,
            terms.parametersVersion,
            nonce,
            expiry
        );
        return keccak256(abi.encodePacked(hex"1901", DOMAIN_SEPARATOR(), keccak256(bytes.concat(head, tail))));
    }

    // ------------------------------------------------------------- internals

    /// @dev Create the task and escrow its reward from `requester`.
    function _create(Terms calldata terms, address requester) private returns (uint256 taskId) {
        Parameters memory p = _params;
        _checkTerms(terms, p);
        taskId = ++taskCount;
        Task storage t = _tasks[taskId];
        t.requester = requester;
        t.reward = terms.reward;
        uint256 submitDeadline = block.timestamp + terms.submitPeriod;
        t.submitDeadline = uint40(submitDeadline);
        t.revealDeadline = uint40(submitDeadline + p.revealPeriod);
        t.testDeadline = uint40(submitDeadline + 2 * uint256(p.revealPeriod));
        t.minScore = terms.minScore;
        t.scorePeriod = terms.scorePeriod;
        t.status = Status.Open;
        t.validations = terms.validations;
        t.kind = terms.kind;
        t.decimals = terms.decimals;
        t.featureCount = terms.featureCount;
        t.testSetCommitment = terms.testSetCommitment;
        uint256 bond = uint256(terms.reward) * p.bondBps / 10_000;
        t.rules = Rules({
            bond: uint96(bond < p.minBond ? p.minBond : bond),
            revealPeriod: p.revealPeriod,
            scoreTolerance: p.scoreTolerance,
            claimSlack: p.claimSlack,
            drawDelayBlocks: p.drawDelayBlocks,
            validatorShareBps: p.validatorShareBps,
            slashBps: p.slashBps,
            noShowBps: p.noShowBps,
            registers: terms.reward >= p.minRegistrationReward && p.registrationsPerPeriod > 0,
            registrationsPerPeriod: p.registrationsPerPeriod,
            registrationPeriod: p.registrationPeriod
        });
        t.datasetCid = terms.datasetCid;
        t.specCid = terms.specCid;
        _emitCreated(taskId, t);
        token.safeTransferFrom(requester, address(this), terms.reward);
    }

    function _emitCreated(uint256 taskId, Task storage t) private {
        emit TaskCreated(
            taskId,
            t.requester,
            msg.sender,
            t.datasetCid,
            t.specCid,
            t.reward,
            t.rules.bond,
            t.submitDeadline,
            t.revealDeadline,
            t.testDeadline
        );
    }

    function _checkVersion(Terms calldata terms) private view {
        if (terms.parametersVersion != parametersVersion) {
            revert ParametersChanged(terms.parametersVersion, parametersVersion);
        }
    }

    /// @dev BadTerm names the term, its value and its range (Validations must also be odd; a CID's value
    /// is its length). The reward must pay every seat at least minSeatReward from the validators' part.
    /// The spec CID and the model shape are checked by the registry, as it will check the accepted model.
    function _checkTerms(Terms calldata terms, Parameters memory p) private view {
        uint256 length = bytes(terms.datasetCid).length;
        if (length == 0 || length > MAX_CID_LENGTH) revert BadTerm(Term.DatasetCid, length, 1, MAX_CID_LENGTH);
        registry.checkModel(terms.specCid, terms.kind, terms.decimals, terms.featureCount);
        if (terms.testSetCommitment == 0) revert BadTerm(Term.TestSetCommitment, 0, 1, type(uint256).max);
        uint256 v = terms.validations;
        if (v == 0 || v > MAX_VALIDATIONS || v % 2 == 0) revert BadTerm(Term.Validations, v, 1, MAX_VALIDATIONS);
        uint256 minReward = (uint256(p.minSeatReward) * v * 10_000 + p.validatorShareBps - 1) / p.validatorShareBps;
        if (terms.reward < minReward) revert BadTerm(Term.Reward, terms.reward, minReward, type(uint96).max);
        if (terms.submitPeriod < p.minPeriod || terms.submitPeriod > p.maxPeriod) {
            revert BadTerm(Term.SubmitPeriod, terms.submitPeriod, p.minPeriod, p.maxPeriod);
        }
        if (terms.scorePeriod < p.minPeriod || terms.scorePeriod > p.maxPeriod) {
            revert BadTerm(Term.ScorePeriod, terms.scorePeriod, p.minPeriod, p.maxPeriod);
        }
        if (terms.minScore > SCORE_SCALE) revert BadTerm(Term.MinScore, terms.minScore, 0, SCORE_SCALE);
    }

    function _buildDomainSeparator() private view returns (bytes32) {
        return keccak256(abi.encode(DOMAIN_TYPEHASH, NAME_HASH, VERSION_HASH, block.chainid, address(this)));
    }
}
