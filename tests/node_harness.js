// What the Node test scripts that start servers share: a temporary folder and the servers they
// started, both removed at exit; a time limit; numbered "ok" lines; a free port on 127.0.0.1.
'use strict';
const fs = require('fs');
const net = require('net');
const os = require('os');
const path = require('path');

// `name` tags the temporary folder; the script fails by itself after `limitSeconds`.
function harness(name, limitSeconds) {
  const servers = [];
  const temp = fs.mkdtempSync(path.join(os.tmpdir(), `dsv3-test-${name}-`));
  process.on('exit', () => {
    for (const server of servers) server.kill('SIGKILL');
    fs.rmSync(temp, { recursive: true, force: true });
  });
  setTimeout(() => {
    console.error(`FAILED: timed out after ${limitSeconds} s`);
    process.exit(1);
  }, limitSeconds * 1000).unref();
  let checks = 0;
  return {
    servers,
    temp,
    ok(what) { ++checks; console.log(`ok ${checks} ${what}`); },
    checks: () => checks,
  };
}

function freePort() {
  return new Promise((resolve, reject) => {
    const probe = net.createServer().listen(0, '127.0.0.1', () => {
      const { port } = probe.address();
      probe.close(() => resolve(port));
    }).on('error', reject);
  });
}

module.exports = { harness, freePort };
