// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {IAccessControl} from "@openzeppelin/contracts/access/IAccessControl.sol";
import {IERC20Errors} from "@openzeppelin/contracts/interfaces/draft-IERC6093.sol";
import {EMLToken} from "../src/EMLToken.sol";
import {ModelRegistry} from "../src/ModelRegistry.sol";
import {vm, EthMLFixture} from "./Base.sol";

/// @notice The EML token and the model registry, each on its own, as the oracle and the training
/// market use them.
contract TokenRegistryTest is EthMLFixture {
    function setUp() public {
        _deploy(1, 1);
    }

    // ------------------------------------------------------------------ token

    function test_token_metadata_and_initial_holders() public view {
        vm.assertEq(token.name(), "EthML Token", "name");
        vm.assertEq(token.symbol(), "EML", "symbol");
        vm.assertEq(token.decimals(), 18, "decimals");
        vm.assertEq(token.balanceOf(USER), FUNDS, "user funds");
        vm.assertEq(token.balanceOf(miners[3]), MINER_FUNDS, "miner funds");
        vm.assertEq(token.totalSupply(), INITIAL_SUPPLY, "supply");
        vm.assertEq(token.oracle(), address(ethml), "bound");
    }

    function test_constructor_rejects_mismatched_holders() public {
        address[] memory holders = new address[](2);
        uint256[] memory amounts = new uint256[](1);
        vm.expectRevert(abi.encodeWithSelector(EMLToken.LengthMismatch.selector, 2, 1));
        new EMLToken(holders, amounts);
    }

    function test_the_oracle_is_bound_once_by_the_deployer() public {
        EMLToken fresh = new EMLToken(new address[](0), new uint256[](0));
        vm.prank(USER);
        vm.expectRevert(abi.encodeWithSelector(EMLToken.NotDeployer.selector, USER));
        fresh.bindOracle(address(ethml));
        vm.expectRevert(EMLToken.ZeroOracle.selector);
        fresh.bindOracle(address(0));
        fresh.bindOracle(address(ethml));
        vm.expectRevert(abi.encodeWithSelector(EMLToken.OracleAlreadyBound.selector, address(ethml)));
        fresh.bindOracle(USER);
    }

    function test_only_the_oracle_mints() public {
        vm.prank(USER);
        vm.expectRevert(abi.encodeWithSelector(EMLToken.NotOracle.selector, USER));
        token.mint(USER, 1 ether);
        vm.prank(address(ethml));
        token.mint(USER, 1 ether);
        vm.assertEq(token.balanceOf(USER), FUNDS + 1 ether, "minted");
    }

    function test_tokens_sent_straight_to_the_oracle_are_refused() public {
        vm.prank(USER);
        vm.expectRevert(EMLToken.TransferToOracle.selector);
        token.transfer(address(ethml), 1 ether);
        vm.prank(USER);
        token.approve(USER, 1 ether);
        vm.prank(USER);
        vm.expectRevert(EMLToken.TransferToOracle.selector);
        token.transferFrom(USER, address(ethml), 1 ether);
    }

    function test_only_the_oracle_moves_eml_without_an_allowance() public {
        vm.prank(miners[0]);
        vm.expectRevert(
            abi.encodeWithSelector(IERC20Errors.ERC20InsufficientAllowance.selector, miners[0], 0, 1 ether)
        );
        token.transferFrom(USER, miners[0], 1 ether);
        vm.prank(address(ethml));
        token.transferFrom(USER, address(ethml), 1 ether);
        vm.assertEq(token.balanceOf(address(ethml)), 1 ether, "pulled by the oracle");
    }

    function test_holders_burn_their_own() public {
        vm.prank(USER);
        token.burn(10 ether);
        vm.assertEq(token.totalSupply(), INITIAL_SUPPLY - 10 ether, "burned");
    }

    // --------------------------------------------------------------- registry

    function test_register_model_stores_everything() public view {
        ModelRegistry.Model memory m = registry.getModel(regressor);
        vm.assertEq(m.cid, "QmRegressorModelCid", "cid");
        vm.assertEq(m.artifactSha256, bytes32(uint256(2)), "sha");
        vm.assertEq(uint256(m.kind), uint256(ModelRegistry.ModelKind.Regression), "kind");
        vm.assertEq(uint256(m.decimals), 2, "decimals");
        vm.assertEq(uint256(m.featureCount), 10, "features");
        vm.assertTrue(m.active, "active");
        vm.assertEq(registry.modelCount(), 2, "count");
        (ModelRegistry.ModelKind kind, uint8 decimals, uint16 features, bool active) = registry.shapeOf(regressor);
        vm.assertEq(uint256(kind), 1, "shape kind");
        vm.assertEq(uint256(decimals) + features, 12, "shape");
        vm.assertTrue(active, "shape active");
    }

    function test_register_model_only_admin_or_registrar() public {
        vm.expectRevert(abi.encodeWithSelector(ModelRegistry.NotRegistrar.selector, USER));
        vm.prank(USER);
        registry.registerModel("Qm", bytes32(0), ModelRegistry.ModelKind.Classification, 0, 1);
        bytes32 role = registry.REGISTRAR_ROLE();
        vm.prank(ADMIN);
        registry.grantRole(role, USER);
        vm.prank(USER);
        registry.registerModel("Qm", bytes32(0), ModelRegistry.ModelKind.Classification, 0, 1);
        bytes32 admin = registry.MODEL_ADMIN_ROLE();
        vm.expectRevert(abi.encodeWithSelector(IAccessControl.AccessControlUnauthorizedAccount.selector, USER, admin));
        vm.prank(USER);
        registry.deactivateModel(1);
    }

    function test_register_model_validates() public {
        vm.startPrank(ADMIN);
        vm.expectRevert(ModelRegistry.EmptyCid.selector);
        registry.registerModel("", bytes32(0), ModelRegistry.ModelKind.Classification, 0, 1);
        vm.expectRevert(abi.encodeWithSelector(ModelRegistry.CidTooLong.selector, 65, 64));
        registry.registerModel(_string(65), bytes32(0), ModelRegistry.ModelKind.Classification, 0, 1);
        vm.expectRevert(abi.encodeWithSelector(ModelRegistry.InvalidModel.selector, "decimals above 18"));
        registry.registerModel("Qm", bytes32(0), ModelRegistry.ModelKind.Regression, 19, 1);
        vm.expectRevert(
            abi.encodeWithSelector(ModelRegistry.InvalidModel.selector, "classification models have no decimals")
        );
        registry.registerModel("Qm", bytes32(0), ModelRegistry.ModelKind.Classification, 2, 1);
        vm.expectRevert(abi.encodeWithSelector(ModelRegistry.InvalidModel.selector, "featureCount is zero"));
        registry.registerModel("Qm", bytes32(0), ModelRegistry.ModelKind.Classification, 0, 0);
        vm.stopPrank();
    }

    function test_unknown_model_and_deactivation() public {
        vm.expectRevert(abi.encodeWithSelector(ModelRegistry.UnknownModel.selector, 0));
        registry.getModel(0);
        vm.prank(ADMIN);
        vm.expectRevert(abi.encodeWithSelector(ModelRegistry.UnknownModel.selector, 9));
        registry.deactivateModel(9);
        vm.prank(ADMIN);
        registry.deactivateModel(classifier);
        vm.assertTrue(!registry.getModel(classifier).active, "inactive");
    }

    function test_model_ids_are_32_bit() public {
        vm.store(address(registry), bytes32(uint256(1)), bytes32(uint256(type(uint32).max)));
        vm.prank(ADMIN);
        vm.expectRevert(abi.encodeWithSelector(ModelRegistry.RegistryFull.selector, uint256(type(uint32).max)));
        registry.registerModel("Qm", bytes32(0), ModelRegistry.ModelKind.Classification, 0, 1);
    }

    function _string(uint256 len) internal pure returns (string memory) {
        bytes memory b = new bytes(len);
        for (uint256 i = 0; i < len; ++i) {
            b[i] = bytes1(uint8(0x41 + (i % 26)));
        }
        return string(b);
    }
}
