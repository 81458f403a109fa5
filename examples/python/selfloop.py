"""A long computation that checkpoints itself every N steps through
libckpt (ctypes); restarted with `ckpt restart IMAGE`, it resumes inside
its last ckpt_checkpoint() call (which then returns 0) and finishes with
the same result as an uninterrupted run.

    sudo python3 selfloop.py /var/tmp/selfloop-py.img --crash-at 75000
    sudo ckpt restart /var/tmp/selfloop-py.img    # prints the same result
    python3 selfloop.py --no-checkpoint           # an uninterrupted run

libckpt.so is found by the dynamic linker (installed by scripts/install.sh)
or named by $CKPT_LIB (e.g. target/release/libckpt.so).
"""

import ctypes
import os
import sys

STEPS = 100_000
EVERY = 20_000
MASK = (1 << 64) - 1

lib = ctypes.CDLL(os.environ.get("CKPT_LIB", "libckpt.so"), use_errno=True)
lib.ckpt_checkpoint.restype = ctypes.c_long
lib.ckpt_checkpoint.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_ulong, ctypes.c_int]
lib.ckpt_last_error.restype = ctypes.c_char_p

args = sys.argv[1:]
crash_at = -1
if "--crash-at" in args:
    i = args.index("--crash-at")
    crash_at = int(args[i + 1])
    del args[i : i + 2]
image = None if "--no-checkpoint" in args else (args[0] if args else None)

resumed = False
x = 1
for step in range(STEPS):
    if image and step > 0 and step % EVERY == 0:
        tmp = image + ".tmp"
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        cid = lib.ckpt_checkpoint(0, fd, 0, -1)
        err = ctypes.get_errno()
        os.close(fd)
        if cid > 0:
            os.rename(tmp, image)  # only the original: it wrote the image
            print(f"step {step}: checkpoint {cid} taken", flush=True)
        elif cid == 0:
            resumed = True
            print(f"step {step}: resumed from the checkpoint", flush=True)
        else:
            msg = lib.ckpt_last_error().decode()
            print(f"step {step}: checkpoint failed ({os.strerror(err)}): {msg}", file=sys.stderr)
    if step == crash_at and not resumed:
        print(f"step {step}: crash!", flush=True)
        os._exit(1)
    x = (x * 6364136223846793005 + 1442695040888963407 + step) & MASK
    x ^= x >> 29
print(f"result {x:016x}")
