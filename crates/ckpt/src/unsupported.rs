//! Process state ckpt sees but cannot save yet. Each rule refuses the
//! checkpoint, naming the process, the object and what to do, instead of
//! writing an image that would restore the process changed ("refuse or
//! restore, never change silently"). The kinds that ckpt does save are
//! checked where they are dumped (fds in `files`, file locks and leases in
//! `locks`; mappings in `mm`).

use crate::error::{Error, Result};
use crate::procfs;
use crate::sys::Pid;

/// Namespace kinds as /proc/PID/ns names them; the `_for_children` links
/// catch a process that unshared a namespace only its children will use.
const NAMESPACES: [&str; 10] = [
    "pid",
    "pid_for_children",
    "mnt",
    "net",
    "ipc",
    "uts",
    "user",
    "cgroup",
    "time",
    "time_for_children",
];

/// Every rule for one frozen process (`status`: its /proc status).
pub fn check_process(pid: Pid, comm: &str, status: &procfs::Status) -> Result<()> {
    seccomp(pid, comm, status)?;
    namespaces(pid, comm, &|kind| own_namespace(kind))?;
    pending_stop(pid, comm)?;
    Ok(())
}

/// Seccomp filters cannot be read back yet.
pub fn seccomp(pid: Pid, comm: &str, status: &procfs::Status) -> Result<()> {
    if status.num("Seccomp").unwrap_or(0) == 0 {
        return Ok(());
    }
    Err(unsupported(
        pid,
        comm,
        "seccomp filters".into(),
        "seccomp state cannot be saved yet".into(),
    ))
}

fn own_namespace(kind: &str) -> Option<Vec<u8>> {
    use std::os::unix::ffi::OsStrExt;
    std::fs::read_link(format!("/proc/self/ns/{kind}"))
        .ok()
        .map(|l| l.as_os_str().as_bytes().to_vec())
}

fn unsupported(pid: Pid, comm: &str, object: String, reason: String) -> Error {
    Error::Unsupported {
        pid,
        comm: comm.to_owned(),
        object,
        reason,
    }
}

/// A process in other namespaces than ckpt's would come back in the
/// restorer's (its getpid() or hostname would change).
fn namespaces(pid: Pid, comm: &str, own: &dyn Fn(&str) -> Option<Vec<u8>>) -> Result<()> {
    for kind in NAMESPACES {
        let Some(mine) = own(kind) else {
            continue; // this kernel lacks the kind (e.g. time namespaces)
        };
        let theirs = procfs::link(pid, &format!("ns/{kind}")).map_err(|e| Error::Sys {
            pid,
            what: format!("read /proc/{pid}/ns/{kind}"),
            source: e,
        })?;
        if theirs != mine {
            return Err(unsupported(
                pid,
                comm,
                format!("its {kind} namespace ({})", ckpt_image::escape(&theirs)),
                format!(
                    "it is not ckpt's ({}); namespaces cannot be saved yet: run ckpt inside the process's namespaces (e.g. `nsenter -t {pid} -a ckpt ...`) so that it is restored into them",
                    ckpt_image::escape(&mine)
                ),
            ));
        }
    }
    Ok(())
}

/// A SIGSTOP queued while the process is stopped cannot be blocked while
/// ckpt injects syscalls: it would be taken from the queue on the way.
fn pending_stop(pid: Pid, comm: &str) -> Result<()> {
    let stop = 1u64 << (libc::SIGSTOP - 1);
    // Each thread's status shows its own queue and the shared one.
    let tids = procfs::tids(pid).map_err(|e| Error::Sys {
        pid,
        what: "list threads".into(),
        source: e,
    })?;
    for t in tids {
        let Ok(text) = procfs::read(pid, &format!("task/{t}/status")) else {
            continue; // a thread of a frozen process cannot vanish but by a kill
        };
        let st = procfs::Status(text);
        if (st.hex("ShdPnd") | st.hex("SigPnd")) & stop != 0 {
            return Err(unsupported(
                pid,
                comm,
                "a pending SIGSTOP".into(),
                "it was sent while the process was already stopped, and ckpt cannot keep it queued while it works yet; continue the process (SIGCONT) or let it take the signal, then retry"
                    .into(),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn other_namespaces_are_refused_naming_the_kind() {
        let me = std::process::id() as Pid;
        // Same namespaces as ours: accepted.
        assert!(namespaces(me, "t", &own_namespace).is_ok());
        // A restorer in another uts namespace: refused, naming it.
        let other = |kind: &str| {
            if kind == "uts" {
                Some(b"uts:[1]".to_vec())
            } else {
                own_namespace(kind)
            }
        };
        let err = namespaces(me, "t", &other).unwrap_err().to_string();
        assert!(err.contains("uts namespace"), "{err}");
        assert!(err.contains("nsenter"), "{err}");
        // A kind this kernel lacks is not a reason to refuse.
        assert!(namespaces(me, "t", &|_| None).is_ok());
    }
}
