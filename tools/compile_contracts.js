#!/usr/bin/env node
// Compile contracts/src with the pinned solc-js into src/ethml/chain/artifacts/*.json.
// Each artifact records the compiler version and a hash of the sources, so a stale artifact is
// caught by the test suite (tests/chain/test_artifacts.py recomputes the hash).
"use strict";
const crypto = require("crypto");
const fs = require("fs");
const path = require("path");
const solc = require("solc");

const root = path.resolve(__dirname, "..");
const srcDir = path.join(root, "contracts", "src");
const outDir = path.join(root, "src", "ethml", "chain", "artifacts");
const CONTRACTS = { "EthML.sol": ["EthML"], "EthMLSettlement.sol": ["EthMLSettlement"], "EMLToken.sol": ["EMLToken"], "ModelRegistry.sol": ["ModelRegistry"], "UsingEthML.sol": ["ExampleConsumer"], "RoundRules.sol": ["RoundRules"], "EthMLTimelock.sol": ["EthMLTimelock"], "TrainingTasks.sol": ["TrainingTasks"], "TrainingValidation.sol": ["TrainingValidation"] };
// A contract whose code runs in two halves (the second by delegatecall from its fallback, see
// contracts/src/TrainingBase.sol) ships one ABI: its own, plus the entries only the other half has. The
// second half ships an artifact of its own too: it is deployed first and its address passed to the first.
const MERGED_ABI = { TrainingTasks: ["TrainingValidation.sol", "TrainingValidation"] };
// Pairs of contracts where one runs the other's code in its own storage (delegatecall): the two must
// agree on every slot, or the build stops.
const SHARED_STORAGE = [
  [["EthML.sol", "EthML"], ["EthMLSettlement.sol", "EthMLSettlement"], "keep all state in OracleStorage"],
  [["TrainingTasks.sol", "TrainingTasks"], ["TrainingValidation.sol", "TrainingValidation"], "declare state only in their common base"],
];
const SETTINGS = {
  optimizer: { enabled: true, runs: 500 },
  evmVersion: "cancun",
  outputSelection: { "*": { "*": ["abi", "evm.bytecode.object", "evm.deployedBytecode.object", "storageLayout"] } },
};

function sourceHash() {
  const h = crypto.createHash("sha256");
  for (const name of fs.readdirSync(srcDir).filter((f) => f.endsWith(".sol")).sort()) {
    h.update(name + "\0" + fs.readFileSync(path.join(srcDir, name)) + "\0");
  }
  const oz = require(path.join(root, "node_modules", "@openzeppelin", "contracts", "package.json"));
  h.update("openzeppelin@" + oz.version + "\0" + JSON.stringify(SETTINGS.optimizer) + SETTINGS.evmVersion);
  return h.digest("hex");
}

function findImport(p) {
  for (const base of [srcDir, path.join(root, "node_modules")]) {
    const full = path.resolve(base, p);
    if (fs.existsSync(full)) return { contents: fs.readFileSync(full, "utf8") };
  }
  return { error: `file not found: ${p}` };
}

const sources = {};
for (const file of Object.keys(CONTRACTS)) {
  sources[file] = { content: fs.readFileSync(path.join(srcDir, file), "utf8") };
}
const output = JSON.parse(
  solc.compile(JSON.stringify({ language: "Solidity", sources, settings: SETTINGS }), { import: findImport }),
);
const errors = (output.errors || []).filter((e) => e.severity === "error");
for (const e of output.errors || []) process.stderr.write(e.formattedMessage + "\n");
if (errors.length) process.exit(1);

const layout = (file, name) =>
  JSON.stringify(output.contracts[file][name].storageLayout.storage.map((v) => [v.label, v.slot, v.offset, v.type]));
for (const [[fileA, nameA], [fileB, nameB], advice] of SHARED_STORAGE) {
  if (layout(fileA, nameA) !== layout(fileB, nameB)) {
    process.stderr.write(`${nameA} and ${nameB} do not share one storage layout: ${advice}\n`);
    process.exit(1);
  }
}

fs.mkdirSync(outDir, { recursive: true });
const hash = sourceHash();
const version = solc.version();
for (const [file, names] of Object.entries(CONTRACTS)) {
  for (const name of names) {
    const c = output.contracts[file][name];
    let abi = c.abi;
    if (MERGED_ABI[name]) {
      const [otherFile, otherName] = MERGED_ABI[name];
      const key = (e) => `${e.type}:${e.name || ""}(${(e.inputs || []).map((i) => i.type).join(",")})`;
      const seen = new Set(abi.map(key));
      const shared = (e) => ["function", "event", "error"].includes(e.type) && !seen.has(key(e));
      abi = abi.concat(output.contracts[otherFile][otherName].abi.filter(shared));
    }
    const artifact = {
      contractName: name,
      compiler: version,
      settings: { optimizer: SETTINGS.optimizer, evmVersion: SETTINGS.evmVersion },
      sourceHash: hash,
      abi,
      bytecode: "0x" + c.evm.bytecode.object,
      deployedBytecode: "0x" + c.evm.deployedBytecode.object,
    };
    const runtime = c.evm.deployedBytecode.object.length / 2;
    const initcode = c.evm.bytecode.object.length / 2;
    if (runtime > 24576 || initcode > 49152) {
      process.stderr.write(`${name}: ${runtime} bytes runtime, ${initcode} initcode: over EIP-170's 24,576 or EIP-3860's 49,152\n`);
      process.exit(1);
    }
    fs.writeFileSync(path.join(outDir, name + ".json"), JSON.stringify(artifact, null, 1) + "\n");
    process.stdout.write(`${name}: ${runtime} bytes runtime, ${initcode} bytes initcode\n`);
  }
}
process.stdout.write(`artifacts written to ${path.relative(root, outDir)} (solc ${version})\n`);
