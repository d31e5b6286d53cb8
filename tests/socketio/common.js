'use strict';
// Small helpers shared by the fixture scripts (no dependencies).

// Parses `--name value` / `--name=value` / boolean `--flag` arguments.
// `spec` maps option names to 'string' | 'int' | 'bool'; unknown options are fatal.
function parseArgs(argv, spec, defaults) {
  const out = Object.assign({}, defaults);
  for (let i = 0; i < argv.length; i++) {
    let arg = argv[i];
    if (!arg.startsWith('--')) fail(`unexpected argument: ${arg}`);
    arg = arg.slice(2);
    let value;
    const eq = arg.indexOf('=');
    if (eq >= 0) {
      value = arg.slice(eq + 1);
      arg = arg.slice(0, eq);
    }
    const type = spec[arg];
    if (!type) fail(`unknown option: --${arg}`);
    const key = arg.replace(/-([a-z])/g, (_, c) => c.toUpperCase());
    if (type === 'bool') {
      out[key] = value === undefined ? true : !/^(0|false|no|off)$/i.test(value);
      continue;
    }
    if (value === undefined) {
      if (i + 1 >= argv.length) fail(`option --${arg} needs a value`);
      value = argv[++i];
    }
    if (type === 'int') {
      const n = Number(value);
      if (!Number.isInteger(n) || n < 0) fail(`option --${arg}: not a non-negative integer: ${value}`);
      out[key] = n;
    } else {
      out[key] = value;
    }
  }
  return out;
}

function fail(msg) {
  process.stderr.write(`error: ${msg}\n`);
  process.exit(2);
}

// Exit when the process that spawned us is gone (e.g. a Rust test that panicked without
// killing its children), so no orphaned node keeps running. Linux re-parents orphans.
function exitWhenOrphaned(onOrphan) {
  const parent = process.ppid;
  const timer = setInterval(() => {
    if (process.ppid !== parent) onOrphan();
  }, 500);
  timer.unref();
}

module.exports = { parseArgs, fail, exitWhenOrphaned };
