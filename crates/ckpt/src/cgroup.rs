//! Cgroup membership: each process is saved with its /proc/PID/cgroup
//! lines and restored into the same cgroups (by path, in every hierarchy
//! mounted here) before its memory is rebuilt, so that its memory is
//! charged and its limits apply as before. A cgroup that does not exist at
//! restart is refused before anything is created.

use crate::error::{Ctx, Error, Result};
use crate::procfs;
use crate::sys::Pid;
use std::path::PathBuf;

/// One line of /proc/PID/cgroup: `id:controllers:path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Membership {
    /// Hierarchy id (0 for cgroup v2).
    pub id: u32,
    /// Comma-separated controllers ("cpu,cpuacct", "name=systemd", "" for v2).
    pub controllers: String,
    pub path: String,
}

/// Parses /proc/PID/cgroup.
pub fn parse(text: &str) -> Result<Vec<Membership>, String> {
    text.lines()
        .filter(|l| !l.is_empty())
        .map(|l| {
            let mut it = l.splitn(3, ':');
            let (Some(id), Some(ctrl), Some(path)) = (it.next(), it.next(), it.next()) else {
                return Err(format!("bad cgroup line {l:?}"));
            };
            let id = id
                .parse()
                .map_err(|_| format!("bad hierarchy id in {l:?}"))?;
            if !path.starts_with('/') || path.split('/').any(|c| c == "..") {
                return Err(format!("bad cgroup path in {l:?}"));
            }
            Ok(Membership {
                id,
                controllers: ctrl.to_owned(),
                path: path.to_owned(),
            })
        })
        .collect()
}

/// A process's cgroups as the image keeps them. Threads in other cgroups
/// than their process (cgroup v2 threaded mode) are refused.
pub fn dump(pid: Pid, comm: &str) -> Result<String> {
    let text = procfs::read(pid, "cgroup").ctx(pid, || "read /proc cgroup".into())?;
    for tid in procfs::tids(pid).ctx(pid, || "list threads".into())? {
        let t = procfs::read(pid, &format!("task/{tid}/cgroup"))
            .ctx(tid, || "read the thread's cgroups".into())?;
        if t != text {
            return Err(Error::Unsupported {
                pid,
                comm: comm.to_owned(),
                object: format!("thread {tid}'s cgroups"),
                reason: "the thread is in other cgroups than its process (threaded cgroups cannot be saved yet)".into(),
            });
        }
    }
    parse(&text).map_err(|e| Error::Unsupported {
        pid,
        comm: comm.to_owned(),
        object: "its cgroups".into(),
        reason: e,
    })?;
    Ok(text)
}

/// Where each hierarchy is mounted here, and ckpt's own cgroups: read once
/// for all the processes of an image.
pub struct Host {
    mounts: Vec<(String, PathBuf)>,
    own: Vec<Membership>,
}

impl Host {
    pub fn read() -> Host {
        Host {
            mounts: mounts(),
            own: parse(&std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default())
                .unwrap_or_default(),
        }
    }
}

/// Where each hierarchy is mounted here: (controllers, mount point);
/// controllers "" is cgroup v2.
fn mounts() -> Vec<(String, PathBuf)> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut out = Vec::new();
    for l in text.lines() {
        // ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTS [OPTIONAL...] - FSTYPE SOURCE SUPER
        let Some((left, right)) = l.split_once(" - ") else {
            continue;
        };
        let f: Vec<&str> = left.split(' ').collect();
        let r: Vec<&str> = right.split(' ').collect();
        if f.len() < 5 || r.len() < 3 || f[3] != "/" {
            continue;
        }
        let point = PathBuf::from(f[4].replace("\\040", " "));
        match r[0] {
            "cgroup2" => out.push((String::new(), point)),
            "cgroup" => {
                // The super options hold the controllers (and name=...).
                let mut ctrl: Vec<&str> = r[2]
                    .split(',')
                    .filter(|o| {
                        !matches!(*o, "rw" | "ro")
                            && !o.starts_with("release_agent")
                            && *o != "clone_children"
                            && *o != "noprefix"
                            && *o != "xattr"
                    })
                    .collect();
                ctrl.sort_unstable();
                out.push((ctrl.join(","), point));
            }
            _ => {}
        }
    }
    out
}

fn key(controllers: &str) -> String {
    let mut c: Vec<&str> = controllers.split(',').filter(|c| !c.is_empty()).collect();
    c.sort_unstable();
    c.join(",")
}

/// What restart must do: for each hierarchy where the image's cgroup
/// differs from ckpt's own, the `cgroup.procs` file to write the pid to.
/// Errors name the cgroup that is missing here.
pub fn plan(host: &Host, pid: Pid, saved: &str) -> Result<Vec<PathBuf>> {
    let refuse = |m: String| Err(Error::Refused(format!("pid {pid}: {m}")));
    let want = match parse(saved) {
        Ok(w) => w,
        Err(e) => return refuse(format!("its cgroups in the image: {e}")),
    };
    let Host { mounts, own } = host;
    let mut out = Vec::new();
    for m in &want {
        let k = key(&m.controllers);
        if own
            .iter()
            .any(|o| key(&o.controllers) == k && o.path == m.path)
        {
            continue; // where restart puts it anyway
        }
        let Some((_, point)) = mounts.iter().find(|(c, _)| *c == k) else {
            return refuse(format!(
                "it was in cgroup {} of the hierarchy {:?}, which is not mounted here",
                m.path, m.controllers
            ));
        };
        let dir = point.join(m.path.trim_start_matches('/'));
        let procs = dir.join("cgroup.procs");
        if !procs.exists() {
            return refuse(format!(
                "its cgroup {} does not exist here; create it (mkdir) and restart again",
                dir.display()
            ));
        }
        out.push(procs);
    }
    Ok(out)
}

/// Moves `pid` into the cgroups of `plan`.
pub fn join(pid: Pid, plan: &[PathBuf]) -> Result<()> {
    for procs in plan {
        std::fs::write(procs, pid.to_string())
            .ctx(pid, || format!("join cgroup {}", procs.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_lines_are_parsed_and_checked() {
        let m = parse("4:memory:/a/b\n0::/\n9:name=systemd:/\n").unwrap();
        assert_eq!(m.len(), 3);
        assert_eq!(m[0].controllers, "memory");
        assert_eq!(m[1].id, 0);
        assert!(parse("4:memory:/../../etc\n").is_err());
        assert!(parse("4:memory\n").is_err());
        assert!(parse("x:memory:/\n").is_err());
    }

    #[test]
    fn own_cgroups_need_no_move() {
        let own = std::fs::read_to_string("/proc/self/cgroup").unwrap();
        let host = Host::read();
        assert_eq!(plan(&host, 1, &own).unwrap(), Vec::<PathBuf>::new());
        let err = plan(&host, 1, "4:memory:/no-such-cgroup-here\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("no-such-cgroup-here"), "{err}");
    }
}
