// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {AccessControl} from "@openzeppelin/contracts/access/AccessControl.sol";

/// @title ModelRegistry: the models the oracle serves.
/// @notice Each model is an IPFS CID of a scikit-learn artifact, the artifact's sha256 (nodes check it
/// before loading), its kind (classification or regression), the fixed-point decimals of a regression
/// prediction and the number of features a data point must have. Ids run from 1; up to 2^32 - 1 of them.
/// Two roles may register: MODEL_ADMIN_ROLE (the deployment's admin, a timelock in production), which
/// may also deactivate a model, and REGISTRAR_ROLE (the training market, which registers accepted
/// models under its own rules).
contract ModelRegistry is AccessControl {
    enum ModelKind {
        Classification,
        Regression
    }

    /// @dev The packed fields share one slot, so `shapeOf` costs one storage read.
    struct Model {
        bytes32 artifactSha256;
        ModelKind kind;
        uint8 decimals;
        uint16 featureCount;
        bool active;
        string cid;
    }

    bytes32 public constant MODEL_ADMIN_ROLE = keccak256("MODEL_ADMIN_ROLE");
    bytes32 public constant REGISTRAR_ROLE = keccak256("REGISTRAR_ROLE");
    uint256 public constant MAX_CID_LENGTH = 64;
    uint8 public constant MAX_DECIMALS = 18;
    uint256 public constant MAX_MODELS = type(uint32).max;

    uint256 public modelCount;
    mapping(uint256 => Model) private _models;

    error UnknownModel(uint256 modelId);
    error EmptyCid();
    error CidTooLong(uint256 length, uint256 maxLength);
    error InvalidModel(string reason);
    error RegistryFull(uint256 maxModels);
    error NotRegistrar(address caller);

    event ModelRegistered(
        uint256 indexed modelId,
        string cid,
        bytes32 artifactSha256,
        ModelKind kind,
        uint8 decimals,
        uint16 featureCount,
        address indexed registrar
    );
    event ModelDeactivated(uint256 indexed modelId);

    constructor(address admin) {
        _grantRole(DEFAULT_ADMIN_ROLE, admin);
        _grantRole(MODEL_ADMIN_ROLE, admin);
    }

    /// @notice Register a model; the caller needs MODEL_ADMIN_ROLE or REGISTRAR_ROLE.
    function registerModel(
        string calldata cid,
        bytes32 artifactSha256,
        ModelKind kind,
        uint8 decimals,
        uint16 featureCount
    ) external returns (uint256 modelId) {
        if (!hasRole(MODEL_ADMIN_ROLE, msg.sender) && !hasRole(REGISTRAR_ROLE, msg.sender)) {
            revert NotRegistrar(msg.sender);
        }
        checkModel(cid, kind, decimals, featureCount);
        uint256 count = modelCount;
        if (count >= MAX_MODELS) revert RegistryFull(MAX_MODELS);
        modelId = count + 1;
        modelCount = modelId;
        _models[modelId] = Model(artifactSha256, kind, decimals, featureCount, true, cid);
        emit ModelRegistered(modelId, cid, artifactSha256, kind, decimals, featureCount, msg.sender);
    }

    function deactivateModel(uint256 modelId) external onlyRole(MODEL_ADMIN_ROLE) {
        Model storage m = _existing(modelId);
        m.active = false;
        emit ModelDeactivated(modelId);
    }

    function getModel(uint256 modelId) external view returns (Model memory) {
        return _existing(modelId);
    }

    /// @notice What the oracle needs of a model, from one storage slot; reverts UnknownModel.
    function shapeOf(uint256 modelId)
        external
        view
        returns (ModelKind kind, uint8 decimals, uint16 featureCount, bool active)
    {
        Model storage m = _existing(modelId);
        return (m.kind, m.decimals, m.featureCount, m.active);
    }

    /// @notice Reverts (EmptyCid, CidTooLong, InvalidModel) unless `registerModel` would accept these
    /// fields; callers that register later (the training market) check a task's terms with it up front.
    function checkModel(string calldata cid, ModelKind kind, uint8 decimals, uint16 featureCount) public pure {
        uint256 len = bytes(cid).length;
        if (len == 0) revert EmptyCid();
        if (len > MAX_CID_LENGTH) revert CidTooLong(len, MAX_CID_LENGTH);
        if (decimals > MAX_DECIMALS) revert InvalidModel("decimals above 18");
        if (kind == ModelKind.Classification && decimals != 0) {
            revert InvalidModel("classification models have no decimals");
        }
        if (featureCount == 0) revert InvalidModel("featureCount is zero");
    }

    /// @dev Registered models have featureCount > 0, so one read tells unknown from known.
    function _existing(uint256 modelId) private view returns (Model storage m) {
        m = _models[modelId];
        if (m.featureCount == 0) revert UnknownModel(modelId);
    }
}
