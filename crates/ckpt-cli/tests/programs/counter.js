// A node program on libuv's event loop (epoll, eventfds, pipes): an
// interval timer appends 1, 2, 3... to a log, async fs reads keep going,
// and a child process runs. Follows the workloads' protocol (wl.h):
// argv FIFO RESULT, "ready" on the FIFO, verifies itself on SIGTERM: the
// log holds 1..n without gap or repeat, n grew after the restart (the
// harness waits for that), async reads completed, the child is still its
// child and reports its exit.
'use strict';
const fs = require('fs');
const { spawn } = require('child_process');
const [fifo, result] = process.argv.slice(2);
const logPath = result + '.log';
const log = fs.openSync(logPath, 'a');
let n = 0;
let reads = 0;
const child = spawn('sleep', ['1000'], { stdio: 'ignore' });
const tick = setInterval(() => {
  n++;
  fs.writeSync(log, `${n}\n`);
  if (n === 20) fs.writeFileSync(fifo, 'ready\n');
}, 5);
(function readAgain() {
  fs.readFile('/proc/self/stat', (err) => {
    if (!err) reads++;
    setTimeout(readAgain, 10);
  });
})();
function finish(fail) {
  fs.writeFileSync(result, fail ? `FAIL: ${fail}\n` : 'PASS\n');
  process.exit(fail ? 1 : 0);
}
process.on('SIGTERM', () => {
  clearInterval(tick);
  const lines = fs.readFileSync(logPath, 'utf8').trim().split('\n').map(Number);
  let fail = null;
  lines.forEach((v, i) => {
    if (!fail && v !== i + 1) fail = `log line ${i + 1} is ${v}`;
  });
  if (!fail && lines.length !== n) fail = `${lines.length} log lines but the counter is ${n}`;
  if (!fail && reads < 10) fail = `only ${reads} async reads completed`;
  child.on('exit', (code, sig) => {
    finish(fail || (sig === 'SIGKILL' ? null : `child exited ${code} ${sig}`));
  });
  if (!child.kill('SIGKILL')) finish(fail || 'cannot signal the child');
});
