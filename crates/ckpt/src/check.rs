//! `ckpt check`: does this kernel, CPU and privilege level support what
//! ckpt needs? Probed by doing it, once, on a scratch child.

use crate::sys;
use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct Feature {
    pub name: &'static str,
    pub ok: bool,
    /// Required for checkpoint/restart at all (exit status depends on it).
    pub essential: bool,
    pub detail: String,
}

fn feature(name: &'static str, essential: bool, r: Result<String, String>) -> Feature {
    let (ok, detail) = match r {
        Ok(d) => (true, d),
        Err(d) => (false, d),
    };
    Feature {
        name,
        ok,
        essential,
        detail,
    }
}

/// A stopped child to probe ptrace on; killed on drop.
struct Probe(sys::Pid);

impl Probe {
    fn start() -> Result<Self, String> {
        // SAFETY: fork of a process that only runs async-signal-safe code in
        // the child (stop itself, then exit).
        let pid = unsafe { libc::fork() };
        match pid {
            -1 => Err(format!("fork: {}", std::io::Error::last_os_error())),
            0 => {
                sys::stop_self();
                sys::exit_now(0)
            }
            p => {
                let _ = sys::wait(p, libc::WUNTRACED);
                Ok(Probe(p))
            }
        }
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        let _ = sys::kill(self.0, libc::SIGKILL);
        let _ = sys::wait(self.0, 0);
    }
}

fn errstr(e: std::io::Error) -> String {
    e.to_string()
}

/// Probes every feature.
pub fn run() -> Vec<Feature> {
    let mut v = Vec::new();
    let root = {
        // SAFETY: plain syscall.
        unsafe { libc::geteuid() }
    } == 0;
    v.push(feature(
        "root",
        true,
        if root {
            Ok("running as root".into())
        } else {
            Err("not root: restoring pids and credentials needs root; run ckpt with sudo".into())
        },
    ));
    let probe = Probe::start();
    v.push(feature(
        "ptrace",
        true,
        match &probe {
            Ok(p) => sys::seize(p.0, 0)
                .map(|_| "PTRACE_SEIZE works".into())
                .map_err(|e| format!("PTRACE_SEIZE: {e} (check kernel.yama.ptrace_scope)")),
            Err(e) => Err(e.clone()),
        },
    ));
    v.push(feature(
        "process_vm_readv",
        false,
        match &probe {
            Ok(p) => {
                // The same address in the forked copy holds 8 valid bytes.
                let mut b = [0u8; 8];
                let a = &b as *const _ as u64;
                match sys::read_process(p.0, a, &mut b) {
                    Ok(8) => Ok("works".into()),
                    Ok(n) => Err(format!("read {n} of 8 bytes")),
                    Err(e) => Err(errstr(e)),
                }
            }
            Err(e) => Err(e.clone()),
        },
    ));
    v.push(feature(
        "proc-mem",
        true,
        match &probe {
            Ok(p) => crate::procfs::mem(p.0)
                .map(|_| "/proc/PID/mem opens read-write".into())
                .map_err(errstr),
            Err(e) => Err(e.clone()),
        },
    ));
    drop(probe);
    v.push(feature("clone3-set_tid", true, probe_set_tid()));
    v.push(feature("PR_SET_MM_MAP", true, probe_mm_map()));
    v.push(feature(
        "rseq",
        false,
        match sys::rseq_config(std::process::id() as i32) {
            // Querying ourselves is refused; EIO/ESRCH mean the request exists.
            Ok(_) => Ok("PTRACE_GET_RSEQ_CONFIGURATION works".into()),
            Err(e)
                if e.raw_os_error() == Some(libc::ESRCH) || e.raw_os_error() == Some(libc::EIO) =>
            {
                Ok("PTRACE_GET_RSEQ_CONFIGURATION known to the kernel".into())
            }
            Err(e) => Err(format!(
                "PTRACE_GET_RSEQ_CONFIGURATION: {e} (kernel older than 5.13?)"
            )),
        },
    ));
    v.push(feature("userfaultfd", false, {
        // SAFETY: plain syscall; the fd is closed right away.
        let fd = unsafe { libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC) };
        if fd >= 0 {
            sys::close(fd as i32);
            Ok("available (lazy restore, incremental dumps)".into())
        } else {
            Err(format!(
                "{} (only needed for lazy/incremental modes)",
                std::io::Error::last_os_error()
            ))
        }
    }));
    v.push(feature("kcmp", true, {
        let me = std::process::id() as i32;
        sys::same_file(me, 0, me, 0)
            .map(|_| "works".into())
            .map_err(|e| format!("{e} (needed to find shared files; CONFIG_KCMP)"))
    }));
    let xcr0 = sys::xcr0();
    v.push(feature(
        "xsave",
        true,
        Ok(format!(
            "XCR0 {xcr0:#x}: {}",
            crate::arch::feature_names(xcr0)
        )),
    ));
    v
}

fn probe_set_tid() -> Result<String, String> {
    // Ask for a pid that is free: the next one after a fresh fork is a guess,
    // so try a few high pids.
    let max: i32 = std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(32768);
    for cand in (max - 200..max - 1).rev() {
        if crate::procfs::exists(cand) {
            continue;
        }
        return match sys::fork_with_pid(cand) {
            Ok(0) => sys::exit_now(0),
            Ok(p) => {
                let _ = sys::wait(p, 0);
                if p == cand {
                    Ok(format!("child created with chosen pid {cand}"))
                } else {
                    Err(format!("asked for pid {cand}, got {p}"))
                }
            }
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => continue,
            Err(e) => Err(format!(
                "clone3 with set_tid: {e} (needs root and kernel >= 5.5)"
            )),
        };
    }
    Err("no free pid found to probe with".into())
}

fn probe_mm_map() -> Result<String, String> {
    // PR_SET_MM_MAP_SIZE tells whether the interface exists; the real call is
    // exercised by every restart.
    const PR_SET_MM: i32 = 35;
    const PR_SET_MM_MAP_SIZE: u64 = 15;
    let mut size: u32 = 0;
    // SAFETY: PR_SET_MM_MAP_SIZE writes one u32 to the pointer.
    let r = unsafe { libc::prctl(PR_SET_MM, PR_SET_MM_MAP_SIZE, &mut size as *mut u32, 0, 0) };
    if r == 0 && size == 104 {
        Ok("prctl_mm_map of 104 bytes".into())
    } else if r == 0 {
        Err(format!("unexpected prctl_mm_map size {size}"))
    } else {
        Err(format!(
            "{} (kernel without CONFIG_CHECKPOINT_RESTORE?)",
            std::io::Error::last_os_error()
        ))
    }
}
