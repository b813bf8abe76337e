// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {EMLToken} from "../src/EMLToken.sol";
import {TrainingBase} from "../src/TrainingBase.sol";
import {TrainingTasks} from "../src/TrainingTasks.sol";
import {TrainingValidation} from "../src/TrainingValidation.sol";
import {vm} from "./Base.sol";
import {TrainingFixture} from "./TrainingFixture.sol";

interface ITokenHook {
    function onTokens(address from, uint256 amount) external;
}

/// @dev EML with an ERC-777-style hook: a receiver that asks for it is called on every transfer to it,
/// the way a token with callbacks would re-enter the market.
contract HookedEML is EMLToken {
    mapping(address => bool) public hooked;

    constructor(address[] memory holders, uint256[] memory amounts) EMLToken(holders, amounts) {}

    function hook() external {
        hooked[msg.sender] = true;
    }

    function _update(address from, address to, uint256 value) internal override {
        super._update(from, to, value);
        if (hooked[to]) ITokenHook(to).onTokens(from, value);
    }
}

/// @dev A trainer that, paid by finalizeTask, re-enters the market: the same settlement again, its own
/// stake's withdrawal, the burn; it records which calls got through.
contract ReenteringTrainer is ITokenHook {
    TrainingTasks internal immutable market;
    uint256 public taskId;
    uint256 public calls;
    bool public finalizedAgain;
    bool public withdrew;
    bool public burned;

    constructor(TrainingTasks market_) {
        market = market_;
    }

    function arm(HookedEML token, uint256 id) external {
        taskId = id;
        token.hook();
    }

    function onTokens(address, uint256) external {
        if (++calls > 1) return;
        try TrainingValidation(address(market)).finalizeTask(taskId) {
            finalizedAgain = true;
        } catch {}
        try market.withdrawStake(TrainingBase.Role.Trainer) {
            withdrew = true;
        } catch {}
        try TrainingValidation(address(market)).burnPenalties() {
            burned = true;
        } catch {}
    }
}

/// @dev Second outside review: re-entering the market through a token with transfer callbacks (EML has
/// none; the market takes any IERC20 at construction). The market resists.
contract TrainingReviewAttacks2ReentryTest is TrainingFixture {
    function setUp() public {
        (address[] memory holders, uint256[] memory amounts) = _accounts();
        _deployMarket(new HookedEML(holders, amounts));
        _stakeValidators();
    }

    /// The winning trainer re-enters on being paid, after its bond is settled and while its stake is
    /// withdrawable: the settlement, the withdrawal and the burn are all refused inside; the task is
    /// settled once, the trainer paid once, and the market holds exactly the stakes and penalties.
    function test_a_token_callback_cannot_reenter_the_settlement() public {
        ReenteringTrainer attacker = new ReenteringTrainer(tasks);
        address trainer = address(attacker);
        vm.prank(requester);
        token.transfer(trainer, STAKE);
        _stake(trainer, TrainingBase.Role.Trainer, STAKE);
        _stake(trainers[1], TrainingBase.Role.Trainer, STAKE);
        uint256 id = _create(3, 800_000);
        _commit(id, trainer, MODEL, 950_000);
        _commit(id, trainers[1], JUNK, 900_000);
        vm.prank(trainer);
        tasks.requestUnstake(TrainingBase.Role.Trainer); // withdrawable once the task settles
        _toRevealWindow(id);
        _reveal(id, trainer, MODEL, 950_000);
        _reveal(id, trainers[1], JUNK, 900_000);
        _toTestWindow(id);
        _revealTest(id);
        _draw(id, keccak256("seed"));
        _allVote(id, false, _scores(950_000, 100_000));
        attacker.arm(HookedEML(address(token)), id);
        panel.finalizeTask(id);
        vm.assertEq(attacker.calls(), 1, "paid once");
        vm.assertTrue(!attacker.finalizedAgain(), "no second settlement");
        vm.assertTrue(!attacker.withdrew(), "no withdrawal inside the settlement");
        vm.assertTrue(!attacker.burned(), "no burn inside the settlement");
        vm.assertEq(token.balanceOf(trainer), 80 ether, "the trainers' part, once");
        vm.assertEq(_stakeOf(trainer, TrainingBase.Role.Trainer).amount, STAKE, "its stake still in the market");
        uint256 held = tasks.pendingBurn() + STAKE + _stakeOf(trainers[1], TrainingBase.Role.Trainer).amount;
        for (uint256 i; i < 7; ++i) {
            held += _validatorStake(validators[i]);
        }
        vm.assertEq(token.balanceOf(address(tasks)), held, "exactly the stakes and the penalties");
        vm.prank(trainer);
        tasks.withdrawStake(TrainingBase.Role.Trainer); // outside the settlement it is its own to take
        vm.assertEq(token.balanceOf(trainer), 80 ether + STAKE, "and nothing more");
    }
}
