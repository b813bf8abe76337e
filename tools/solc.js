#!/usr/bin/env node
// A `solc` executable for forge backed by the pinned solc-js from npm.
// forge runs `solc --version` and `solc --standard-json` (input on stdin);
// imports resolve against the project root and node_modules.
"use strict";
const fs = require("fs");
const path = require("path");
const solc = require("solc");

const root = path.resolve(__dirname, "..");
const args = process.argv.slice(2);

if (args.includes("--version")) {
  const v = solc.version().replace(".Emscripten.clang", "");
  process.stdout.write(`solc, the solidity compiler commandline interface\nVersion: ${v}\n`);
  process.exit(0);
}

function findImport(p) {
  for (const base of [process.cwd(), root, path.join(root, "node_modules")]) {
    const full = path.resolve(base, p);
    if (fs.existsSync(full)) return { contents: fs.readFileSync(full, "utf8") };
  }
  return { error: `file not found: ${p}` };
}

const input = fs.readFileSync(0, "utf8");
process.stdout.write(solc.compile(input, { import: findImport }));
