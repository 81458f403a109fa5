"""Self-checkpoint through the C interface from Python (ctypes), with a
second thread computing meanwhile. Usage: selfckpt.py LIBCKPT IMAGE.
Prints "taken N" or "resumed", then "result ... ok"; exit 0 if both
threads' results match a run without checkpoint."""

import ctypes
import os
import sys
import threading

lib = ctypes.CDLL(sys.argv[1], use_errno=True)
lib.ckpt_checkpoint.restype = ctypes.c_long
lib.ckpt_checkpoint.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_ulong, ctypes.c_int]
lib.ckpt_last_error.restype = ctypes.c_char_p
image = sys.argv[2]

STEPS = 200000
MASK = (1 << 64) - 1


def step(x, i):
    x = (x * 6364136223846793005 + 1442695040888963407 + i) & MASK
    return x ^ (x >> 29)


results = {}


def chain(name, seed):
    x = seed
    for i in range(STEPS):
        x = step(x, i)
    results[name] = x


other = threading.Thread(target=chain, args=("other", 1))
other.start()
x = 7
for i in range(STEPS):
    if i == STEPS // 2:
        fd = os.open(image, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        r = lib.ckpt_checkpoint(0, fd, 0, -1)
        os.close(fd)
        if r > 0:
            print(f"taken {r}", flush=True)
        elif r == 0:
            print("resumed", flush=True)
        else:
            e = ctypes.get_errno()
            print(f"checkpoint failed: {os.strerror(e)}: {lib.ckpt_last_error().decode()}", flush=True)
            sys.exit(2)
    x = step(x, i)
other.join()
want = {"main": 7, "other": 1}
for k in want:
    for i in range(STEPS):
        want[k] = step(want[k], i)
ok = x == want["main"] and results["other"] == want["other"]
print(f"result {x:016x} {results['other']:016x} {'ok' if ok else 'WRONG'}", flush=True)
sys.exit(0 if ok else 1)
