// Runs DigitalOcean's deployer's own `${VAR}` substitution on a project.yml, with a .env file.
//
//   node deployer_subst.js DEPLOYER_LIB_INDEX PROJECT_YML ENV_FILE
//
// DEPLOYER_LIB_INDEX is @nimbella/nimbella-deployer's lib/index.js (the deployer that
// DigitalOcean's functions-deployer is forked from), installed by tests/support/deployer.py.
// Its `substituteFromEnvAndFiles` (src/util.ts) is not exported, so the bundle is compiled
// verbatim as a module with one export line appended. Prints {content, badVars} as JSON.
"use strict";
const fs = require("fs");
const path = require("path");
const Module = require("module");

const [index, projectYml, envFile] = process.argv.slice(2);
const source = fs.readFileSync(index, "utf8") +
  "\nmodule.exports.__substituteFromEnvAndFiles = substituteFromEnvAndFiles;\n";
const mod = new Module(index, module);
mod.filename = index;
mod.paths = Module._nodeModulePaths(path.dirname(index));
mod._compile(source, index);
const feedback = { warn: (...args) => console.error(...args), progress: () => {} };
const { content, badVars } = mod.exports.__substituteFromEnvAndFiles(
  fs.readFileSync(projectYml, "utf8"), envFile, path.dirname(projectYml), feedback);
process.stdout.write(JSON.stringify({ content, badVars: badVars || [] }));
