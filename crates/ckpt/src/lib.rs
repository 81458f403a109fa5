//! ckpt: checkpoint/restart of Linux processes from user space.
//!
//! `checkpoint` freezes a process with ptrace, reads its state from /proc
//! and with syscalls injected into it, and writes one image stream;
//! `restart` validates a whole image, then rebuilds the process with its
//! original pid and lets it carry on. The image format is the `ckpt-image`
//! crate; every raw syscall is in `sys`.
//!
//! The API, in three calls (the same exist for C in `include/ckpt.h`, see
//! `capi`):
//!
//! * [`checkpoint()`]`(pid, out, &opts, &mut log)` saves a process tree into
//!   any [`checkpoint::Sink`] (a `File`, or any `Write` through
//!   [`checkpoint::Stream`]);
//! * [`restart()`]`(input, &opts, &mut log)` restarts an image from a file,
//!   pipe or socket and returns the restored root's pid;
//! * [`checkpoint_self()`]`(out, &opts, &mut log)` saves the calling process
//!   and returns [`SelfCheckpoint::Taken`] with an id, or
//!   [`SelfCheckpoint::Resumed`] in the process restarted from that image.
//!
//! ```no_run
//! use ckpt::{checkpoint_self, Log, SelfCheckpoint, SelfOptions};
//! let mut total = 0u64;
//! for step in 0..1_000_000u64 {
//!     if step % 100_000 == 0 {
//!         let img = std::fs::OpenOptions::new()
//!             .read(true).write(true).create(true).truncate(true)
//!             .open("/var/tmp/job.img")?;
//!         match checkpoint_self(&img, &SelfOptions::default(), &mut Log::default())? {
//!             SelfCheckpoint::Taken(id) => eprintln!("checkpoint {id} at step {step}"),
//!             SelfCheckpoint::Resumed => eprintln!("restarted at step {step}"),
//!         }
//!     }
//!     total = total.wrapping_mul(31).wrapping_add(step);
//! }
//! println!("{total}");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! The library leaves the caller's process-wide state alone: no signal
//! handler, signal mask, limit or environment variable is changed or read
//! (the `ckpt` command line installs its own handlers; restart raises the
//! fd limit only for the duration of the call, when an image needs it).

pub mod arch;
pub mod capi;
pub mod cgroup;
pub mod check;
pub mod checkpoint;
pub mod creds;
pub mod error;
pub mod files;
pub mod freeze;
pub mod heal;
pub mod ids;
pub mod locks;
pub mod log;
pub mod mm;
pub mod model;
pub mod netblock;
pub mod pagestore;
pub mod process_kind;
pub mod procfs;
pub mod remote;
pub mod restart;
pub mod self_checkpoint;
pub mod sockdiag;
pub mod sys;
pub mod task;
#[doc(hidden)]
pub mod test_hooks;
pub mod timers;
pub mod trust;
pub mod unsupported;

pub use checkpoint::{checkpoint, CheckpointOptions, Summary};
pub use error::{Error, Result};
pub use log::Log;
pub use restart::{restart, RestartOptions};
pub use self_checkpoint::{checkpoint_self, SelfCheckpoint, SelfOptions};

use ckpt_image::{Head, Text, ARCH_X86_64, FORMAT_REVISION, HEAD_MAGIC};

/// The head record for an image written now, on this machine.
pub fn head(flags: u32) -> Head {
    let u = uname();
    let field = |f: &[libc::c_char]| {
        Text(
            f.iter()
                .take_while(|&&c| c != 0)
                .map(|&c| c as u8)
                .collect(),
        )
    };
    Head {
        magic: HEAD_MAGIC,
        revision: FORMAT_REVISION,
        flags,
        time_ns: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0),
        arch: ARCH_X86_64,
        page_size: 4096,
        task_comm_len: 16,
        nsig: 64,
        siginfo_size: 128,
        kernel_release: field(&u.release),
        kernel_version: field(&u.version),
        machine: field(&u.machine),
        hostname: field(&u.nodename),
        writer: Text(format!("ckpt {}", env!("CARGO_PKG_VERSION")).into_bytes()),
    }
}

/// Rounds up to a multiple of the page size.
pub fn align_up(v: u64) -> u64 {
    ckpt_image::align_up(v, 4096)
}

/// uname(2).
pub fn uname() -> libc::utsname {
    // SAFETY: utsname is plain bytes; all-zero is valid.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: u is a valid out-pointer.
    unsafe { libc::uname(&mut u) };
    u
}
