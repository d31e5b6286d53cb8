'use strict';
// Child processes for the browser test: spawn, keep their output, wait for a line, stop with a deadline.

const { spawn } = require('node:child_process');
const net = require('node:net');

const running = new Set();

// A test runner killed mid-test must not leave Redis, nodes or limpet behind.
process.on('exit', () => {
  for (const p of running) p.child.kill('SIGKILL');
});

/** A spawned process whose stdout and stderr lines are kept for waits and failure reports. */
class Proc {
  constructor(name, cmd, args, options = {}) {
    this.name = name;
    this.lines = [];
    this.exit = null;
    this.waiters = new Set();
    this.child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], ...options });
    running.add(this);
    for (const stream of [this.child.stdout, this.child.stderr]) {
      let buf = '';
      stream.setEncoding('utf8');
      stream.on('data', (chunk) => {
        buf += chunk;
        let nl;
        while ((nl = buf.indexOf('\n')) >= 0) {
          this.push(buf.slice(0, nl));
          buf = buf.slice(nl + 1);
        }
      });
    }
    this.exited = new Promise((resolve) => {
      this.child.on('exit', (code, signal) => {
        this.exit = signal ? `signal ${signal}` : `code ${code}`;
        running.delete(this);
        for (const w of this.waiters) w();
        resolve(this.exit);
      });
      this.child.on('error', (e) => {
        this.push(`spawn error: ${e.message}`);
        this.exit = `spawn error: ${e.message}`;
        running.delete(this);
        for (const w of this.waiters) w();
        resolve(this.exit);
      });
    });
  }

  push(line) {
    this.lines.push(line);
    for (const w of this.waiters) w();
  }

  /** Resolves with the first match of `re` in any output line; rejects if the process exits or time runs out. */
  waitFor(re, timeoutMs, what) {
    return new Promise((resolve, reject) => {
      const check = () => {
        for (const line of this.lines) {
          const m = line.match(re);
          if (m) return done(null, m);
        }
        if (this.exit) return done(new Error(`${this.name} exited (${this.exit}) before ${what}\n${this.tail()}`));
        return undefined;
      };
      const timer = setTimeout(() => done(new Error(`${this.name}: no ${what} within ${timeoutMs} ms\n${this.tail()}`)), timeoutMs);
      const done = (err, m) => {
        clearTimeout(timer);
        this.waiters.delete(check);
        if (err) reject(err);
        else resolve(m);
      };
      this.waiters.add(check);
      check();
    });
  }

  /** The last output lines, for failure messages. */
  tail(n = 30) {
    return this.lines
      .slice(-n)
      .map((l) => `  [${this.name}] ${l}`)
      .join('\n');
  }

  /** SIGTERM, then SIGKILL if it has not exited within `graceMs`. */
  async stop(graceMs = 5000) {
    if (this.exit) return this.exit;
    this.child.kill('SIGTERM');
    const timer = setTimeout(() => this.child.kill('SIGKILL'), graceMs);
    const how = await this.exited;
    clearTimeout(timer);
    return how;
  }
}

/** A loopback port that was free a moment ago (for programs that cannot bind port 0 and report it). */
function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

/** Polls `probe` (async, returns a truthy value when done) until it succeeds or `timeoutMs` passes. */
async function eventually(timeoutMs, what, probe) {
  const deadline = Date.now() + timeoutMs;
  let last = null;
  for (;;) {
    try {
      const v = await probe();
      if (v) return v;
    } catch (e) {
      last = e;
    }
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${last ? `: ${last.message}` : ''}`);
    }
    await new Promise((r) => setTimeout(r, 100));
  }
}

module.exports = { Proc, freePort, eventually };
