// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";
import {EthMLTimelock} from "../src/EthMLTimelock.sol";
import {ModelRegistry} from "../src/ModelRegistry.sol";
import {TrainingBase} from "../src/TrainingBase.sol";
import {TrainingTasks} from "../src/TrainingTasks.sol";
import {vm} from "./Base.sol";
import {TrainingFixture} from "./TrainingFixture.sol";

/// @dev A smart-contract requester (ERC-1271): valid signatures are its owner's.
contract RequesterWallet {
    address internal immutable owner;

    constructor(address owner_) {
        owner = owner_;
    }

    function approve(IERC20 token, address spender, uint256 amount) external {
        token.approve(spender, amount);
    }

    function isValidSignature(bytes32 hash, bytes calldata signature) external view returns (bytes4) {
        return ECDSA.recover(hash, signature) == owner ? this.isValidSignature.selector : bytes4(0);
    }
}

/// @dev Issue 18, item 8: a relayer could spend any standing allowance on terms the requester never saw,
/// and the admin could change slash, share and tolerance under open tasks. Now the requester signs the
/// exact terms (EIP-712), a failed permit without allowance reverts, parameters are snapshotted per task,
/// and the admin of a production deployment is a timelock.
contract TrainingTermsTest is TrainingFixture {
    uint256 internal constant SIGNER_KEY = 0x5157;
    address internal signer;
    address internal constant RELAYER = address(0x9EE1);
    bytes32 internal constant PERMIT_TYPEHASH =
        keccak256("Permit(address owner,address spender,uint256 value,uint256 nonce,uint256 deadline)");

    function setUp() public {
        _setUpTraining();
        signer = vm.addr(SIGNER_KEY);
        vm.prank(requester);
        token.transfer(signer, 10 * REWARD); // no approval: it pays through permits
    }

    /// @dev The EIP-712 digest computed field by field here, independently of the contract's code.
    function _digest(TrainingTasks.Terms memory terms, address who, uint256 nonce, uint256 expiry)
        internal
        view
        returns (bytes32)
    {
        bytes32 typeHash = keccak256(
            "TaskTerms(address requester,string datasetCid,string specCid,bytes32 testSetCommitment,"
            "uint96 reward,uint32 submitPeriod,uint32 scorePeriod,uint8 validations,uint32 minScore,uint8 kind,"
            "uint8 decimals,uint16 featureCount,uint32 parametersVersion,uint256 nonce,uint256 expiry)"
        );
        bytes memory fields = bytes.concat(
            bytes32(uint256(uint160(who))),
            keccak256(bytes(terms.datasetCid)),
            keccak256(bytes(terms.specCid)),
            terms.testSetCommitment,
            bytes32(uint256(terms.reward)),
            bytes32(uint256(terms.submitPeriod)),
            bytes32(uint256(terms.scorePeriod))
        );
        fields = bytes.concat(
            fields,
            bytes32(uint256(terms.validations)),
            bytes32(uint256(terms.minScore)),
            bytes32(uint256(uint8(terms.kind))),
            bytes32(uint256(terms.decimals)),
            bytes32(uint256(terms.featureCount)),
            bytes32(uint256(terms.parametersVersion)),
            bytes32(nonce),
            bytes32(expiry)
        );
        bytes32 domain = keccak256(
            abi.encode(
                keccak256("EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)"),
                keccak256("EthML TrainingTasks"),
                keccak256("1"),
                block.chainid,
                address(tasks)
            )
        );
        return keccak256(abi.encodePacked(hex"1901", domain, keccak256(bytes.concat(typeHash, fields))));
    }

    function _sign(uint256 key, bytes32 digest) internal pure returns (bytes memory) {
        (uint8 v, bytes32 r, bytes32 s) = vm.sign(key, digest);
        return abi.encodePacked(r, s, v);
    }

    function _permit(uint256 key, uint256 value, uint256 nonce) internal view returns (TrainingTasks.Permit memory p) {
        uint256 deadline = block.timestamp + 1 hours;
        bytes32 structHash = keccak256(abi.encode(PERMIT_TYPEHASH, vm.addr(key), address(tasks), value, nonce, deadline));
        bytes32 digest = keccak256(abi.encodePacked(hex"1901", token.DOMAIN_SEPARATOR(), structHash));
        (p.v, p.r, p.s) = vm.sign(key, digest);
        p.deadline = deadline;
    }

    function _noPermit() internal pure returns (TrainingTasks.Permit memory p) {}

    function _relay(TrainingTasks.Terms memory terms, address who, uint256 expiry, bytes memory sig, TrainingTasks.Permit memory p)
        internal
        returns (uint256)
    {
        vm.prank(RELAYER);
        return tasks.createTaskFor(terms, who, expiry, sig, p);
    }

    function test_item8_the_digest_is_standard_eip712() public view {
        TrainingTasks.Terms memory terms = _terms(3, 800_000);
        uint256 expiry = block.timestamp + 1 hours;
        vm.assertEq(tasks.termsDigest(terms, signer, 7, expiry), _digest(terms, signer, 7, expiry), "digest");
        vm.assertEq(
            tasks.DOMAIN_SEPARATOR(),
            keccak256(
                abi.encode(
                    keccak256("EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)"),
                    keccak256("EthML TrainingTasks"),
                    keccak256("1"),
                    block.chainid,
                    address(tasks)
                )
            ),
            "domain"
        );
    }

    /// Anyone may relay signed terms; the signer is the requester and pays through its permit.
    function test_item8_signed_terms_are_relayed_by_anyone_and_paid_by_the_signer() public {
        TrainingTasks.Terms memory terms = _terms(3, 800_000);
        uint256 expiry = block.timestamp + 1 hours;
        bytes memory sig = _sign(SIGNER_KEY, _digest(terms, signer, 0, expiry));
        uint256 id = _relay(terms, signer, expiry, sig, _permit(SIGNER_KEY, REWARD, 0));
        vm.assertEq(_task(id).requester, signer, "the signer is the requester");
        vm.assertEq(token.balanceOf(signer), 9 * REWARD, "escrow from the signer");
        vm.assertEq(token.balanceOf(RELAYER), 0, "nothing from the relayer");
        vm.assertEq(tasks.nonces(signer), 1, "nonce used");
        vm.assertEq(_task(id).submitDeadline, block.timestamp + PERIOD, "windows from the block that created it");
        // Replayed, the same signature names a used nonce.
        vm.expectRevert(abi.encodeWithSelector(TrainingBase.InvalidSignature.selector, signer));
        _relay(terms, signer, expiry, sig, _noPermit());
    }

    /// Whatever term the relayer changes (or the requester it names, or the expiry), the signature fails.
    function test_item8_a_relayer_cannot_change_any_term() public {
        uint256 expiry = block.timestamp + 1 hours;
        TrainingTasks.Terms memory signed = _terms(3, 800_000);
        bytes memory sig = _sign(SIGNER_KEY, _digest(signed, signer, 0, expiry));
        vm.prank(signer);
        token.approve(address(tasks), type(uint256).max);
        for (uint256 field; field < 11; ++field) {
            TrainingTasks.Terms memory t = _terms(3, 800_000);
            if (field == 0) t.datasetCid = "bafkreiotherdataset";
            if (field == 1) t.specCid = "bafkreiotherspec";
            if (field == 2) t.testSetCommitment = keccak256("another test set");
            if (field == 3) t.reward = REWARD + 1;
            if (field == 4) t.submitPeriod = PERIOD - 1;
            if (field == 5) t.scorePeriod = SCORE_PERIOD + 1;
            if (field == 6) t.validations = 1;
            if (field == 7) t.minScore = 0;
            if (field == 8) t.kind = ModelRegistry.ModelKind.Regression;
            if (field == 9) t.decimals = 0; // unchanged value ...
            if (field == 9) t.featureCount = 12; // ... and another feature count
            if (field == 10) t.featureCount = 14;
            vm.expectRevert(abi.encodeWithSelector(TrainingBase.InvalidSignature.selector, signer));
            _relay(t, signer, expiry, sig, _noPermit());
        }
        TrainingTasks.Terms memory other = _terms(3, 800_000);
        other.parametersVersion += 1; // terms for parameters that do not exist (yet)
        vm.expectRevert(abi.encodeWithSelector(TrainingBase.ParametersChanged.selector, 2, 1));
        _relay(other, signer, expiry, sig, _noPermit());
        vm.expectRevert(abi.encodeWithSelector(TrainingBase.InvalidSignature.selector, signer));
        _relay(signed, signer, expiry + 1, sig, _noPermit());
        vm.expectRevert(abi.encodeWithSelector(TrainingBase.InvalidSignature.selector, requester));
        _relay(signed, requester, expiry, sig, _noPermit()); // charging someone else's allowance
        vm.assertEq(tasks.taskCount(), 0, "nothing created");
        _relay(signed, signer, expiry, sig, _noPermit());
        vm.assertEq(tasks.taskCount(), 1, "the signed terms, unchanged, go through");
    }

    function test_item8_expired_or_voided_signatures_are_refused() public {
        TrainingTasks.Terms memory terms = _terms(3, 800_000);
        uint256 expiry = block.timestamp + 1 hours;
        bytes memory sig = _sign(SIGNER_KEY, _digest(terms, signer, 0, expiry));
        vm.prank(signer);
        token.approve(address(tasks), type(uint256).max);
        vm.warp(expiry + 1);
        vm.expectRevert(abi.encodeWithSelector(TrainingBase.SignatureExpired.selector, expiry));
        _relay(terms, signer, expiry, sig, _noPermit());
        vm.warp(expiry);
        vm.prank(signer);
        tasks.useNonce(); // the requester changes its mind
        vm.expectRevert(abi.encodeWithSelector(TrainingBase.InvalidSignature.selector, signer));
        _relay(terms, signer, expiry, sig, _noPermit());
    }

    /// A permit that fails (signed for less) with no allowance behind it reverts; one already spent by
    /// someone else is fine, the allowance it set covers the reward.
    function test_item8_a_failed_permit_without_allowance_reverts() public {
        TrainingTasks.Terms memory terms = _terms(3, 800_000);
        uint256 expiry = block.timestamp + 1 hours;
        bytes memory sig = _sign(SIGNER_KEY, _digest(terms, signer, 0, expiry));
        TrainingTasks.Permit memory tooSmall = _permit(SIGNER_KEY, REWARD - 1, 0);
        vm.expectRevert(abi.encodeWithSelector(TrainingBase.EscrowNotApproved.selector, signer, 0, REWARD));
        _relay(terms, signer, expiry, sig, tooSmall);
        vm.expectRevert(abi.encodeWithSelector(TrainingBase.EscrowNotApproved.selector, signer, 0, REWARD));
        _relay(terms, signer, expiry, sig, _noPermit());
        TrainingTasks.Permit memory p = _permit(SIGNER_KEY, REWARD, 0);
        token.permit(signer, address(tasks), REWARD, p.deadline, p.v, p.r, p.s); // front-run
        uint256 id = _relay(terms, signer, expiry, sig, p);
        vm.assertEq(_task(id).requester, signer, "created from the allowance the permit left");
        vm.assertEq(token.allowance(signer, address(tasks)), 0, "spent exactly");
    }

    function test_item8_a_contract_wallet_can_sign_terms() public {
        RequesterWallet wallet = new RequesterWallet(signer);
        vm.prank(requester);
        token.transfer(address(wallet), REWARD);
        wallet.approve(token, address(tasks), REWARD);
        TrainingTasks.Terms memory terms = _terms(3, 800_000);
        uint256 expiry = block.timestamp + 1 hours;
        bytes memory sig = _sign(SIGNER_KEY, _digest(terms, address(wallet), 0, expiry));
        uint256 id = _relay(terms, address(wallet), expiry, sig, _noPermit());
        vm.assertEq(_task(id).requester, address(wallet), "the wallet is the requester");
        bytes memory other = _sign(0xBAD, _digest(terms, address(wallet), 1, expiry));
        vm.expectRevert(abi.encodeWithSelector(TrainingBase.InvalidSignature.selector, address(wallet)));
        _relay(terms, address(wallet), expiry, other, _noPermit());
    }

    /// The admin changes every share, slash, bond and window under an open task: the task keeps the rules
    /// it was created with; the next task gets the new ones.
    function test_item8_parameters_are_snapshotted_per_task() public {
        uint256 id = _create(3, 800_000);
        TrainingBase.Task memory before = _task(id);
        TrainingBase.Parameters memory p = _params();
        p.slashBps = 5_000;
        p.noShowBps = 5_000;
        p.validatorShareBps = 5_000;
        p.bondBps = 5_000;
        p.revealPeriod = 7 days;
        p.scoreTolerance = 0;
        p.claimSlack = 0;
        p.drawDelayBlocks = 100;
        p.minRegistrationReward = 1_000 ether;
        vm.prank(ADMIN);
        tasks.setParameters(p);
        TrainingBase.Task memory after_ = _task(id);
        vm.assertEq(keccak256(abi.encode(after_.rules)), keccak256(abi.encode(before.rules)), "rules unchanged");
        vm.assertEq(after_.testDeadline, before.testDeadline, "windows unchanged");
        _submitAll(id, _one(trainers[0]), _cids(MODEL), _claims(950_000));
        vm.assertEq(_task(id).drawBlock, block.number + 2, "the old draw delay");
        _drawDistinct(id);
        address[] memory seated = _seated(id);
        _commitVote(id, seated[0], false, _scores(0));
        _commitVote(id, seated[1], false, _scores(950_000));
        _commitVote(id, seated[2], false, _scores(940_000)); // within the old tolerance of 0.02
        for (uint256 i; i < 3; ++i) {
            _revealVote(id, seated[i]);
        }
        _finalize(id);
        vm.assertEq(_validatorStake(seated[0]), STAKE - 10 ether, "the old 10 % slash");
        vm.assertEq(_validatorStake(seated[2]), STAKE, "the old tolerance");
        vm.assertEq(token.balanceOf(seated[1]), FUNDS - STAKE + 10 ether, "the old 20 % share");
        vm.assertEq(token.balanceOf(seated[2]), FUNDS - STAKE + 10 ether, "the old 20 % share");
        vm.assertEq(uint256(_task(id).registration), uint256(TrainingBase.Registration.Registered), "old minimum");
        vm.assertEq(uint256(_task(_create(3, 800_000)).rules.bond), 50 ether, "a new task: the new bond");
    }

    function _refused(TrainingBase.Parameters memory p, string memory reason) internal {
        vm.prank(ADMIN);
        vm.expectRevert(abi.encodeWithSelector(TrainingBase.InvalidParameters.selector, reason));
        tasks.setParameters(p);
    }

    /// Every bound, at its edge: the value just past it is refused, the value at it accepted.
    function test_parameters_are_bounded() public {
        TrainingBase.Parameters memory p = _params();
        p.slashBps = 5_001;
        _refused(p, "a share above 50%");
        p = _params();
        p.noShowBps = p.slashBps + 1;
        _refused(p, "noShowBps above slashBps");
        p = _params();
        p.drawDelayBlocks = 0;
        _refused(p, "drawDelayBlocks not 1..128");
        p = _params();
        p.unstakeDelay = 1 days - 1; // a validator weighed in a draw could leave before it is made
        _refused(p, "unstakeDelay not 1..30 days");
        p.unstakeDelay = 0;
        _refused(p, "unstakeDelay not 1..30 days");
        p = _params();
        p.maxPeriod = 7 days + 1; // a silent seat could hold stakes longer
        _refused(p, "a period above 7 days");
        p = _params();
        p.registrationPeriod = 7 days + 1; // the admin could stall registrations
        _refused(p, "a period above 7 days");
        p = _params();
        p.minPeriod = p.maxPeriod + 1;
        _refused(p, "not 0 < minPeriod <= maxPeriod");
        p = _params();
        p.validatorShareBps = 0; // a panel would work unpaid
        _refused(p, "validators unpaid");
        p = _params();
        p.minSeatReward = 0;
        _refused(p, "validators unpaid");
        p = _params();
        (p.unstakeDelay, p.maxPeriod, p.registrationPeriod, p.revealPeriod) = (1 days, 7 days, 7 days, 7 days);
        p.minPeriod = 7 days;
        p.registrationsPerPeriod = 0; // allowed: tasks created from now on register nothing
        vm.prank(ADMIN);
        tasks.setParameters(p);
        vm.assertEq(uint256(tasks.parametersVersion()), 2, "every change moves the version");
        vm.prank(requester);
        vm.expectRevert(
            abi.encodeWithSelector(
                bytes4(keccak256("AccessControlUnauthorizedAccount(address,bytes32)")), requester, bytes32(0)
            )
        );
        tasks.setParameters(_params());
    }

    /// On a production deployment the admin is the EthMLTimelock: a change waits its delay.
    function test_item8_a_timelock_admin_delays_every_parameter_change() public {
        address ops = address(0x0975);
        address[] memory roles = new address[](1);
        roles[0] = ops;
        EthMLTimelock timelock = new EthMLTimelock(2 days, roles, roles);
        TrainingTasks governed = _newTasks(address(timelock));
        TrainingBase.Parameters memory p = _params();
        p.slashBps = 2_000;
        vm.prank(ops);
        vm.expectRevert(
            abi.encodeWithSelector(
                bytes4(keccak256("AccessControlUnauthorizedAccount(address,bytes32)")), ops, bytes32(0)
            )
        );
        governed.setParameters(p);
        bytes memory call = abi.encodeCall(governed.setParameters, (p));
        vm.prank(ops);
        timelock.schedule(address(governed), 0, call, bytes32(0), bytes32(0), 2 days);
        vm.prank(ops);
        vm.expectRevert();
        timelock.execute(address(governed), 0, call, bytes32(0), bytes32(0));
        vm.warp(block.timestamp + 2 days);
        vm.prank(ops);
        timelock.execute(address(governed), 0, call, bytes32(0), bytes32(0));
        vm.assertEq(uint256(governed.parameters().slashBps), 2_000, "changed after the delay");
    }
}
