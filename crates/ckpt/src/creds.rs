//! Credentials. Restore runs as the restorer and only ever changes ids and
//! capabilities the kernel lets it change, so an image can never grant more
//! than the user running `ckpt restart` already has; what root may grant is
//! limited to the image owner's by `trust`. Credentials are per thread:
//! every thread gets them.

use crate::error::Result;
use crate::remote::Remote;
use crate::task::{dump_creds, Scratch};
use ckpt_image::Creds;

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// Gives the task the filesystem ids `ids` (injected setgroups, setfsgid,
/// setfsuid), so that the paths it opens for its rebuild (mapped files, the
/// executable) are opened as the image's owner. Its real credentials come
/// later with [`restore`].
pub fn enter_fs(r: &mut Remote, s: &Scratch, ids: &crate::sys::FsIds) -> Result<()> {
    let b: Vec<u8> = ids.groups.iter().flat_map(|g| g.to_le_bytes()).collect();
    s.write(0, &b)?;
    r.call(
        "setgroups",
        libc::SYS_setgroups,
        &[ids.groups.len() as u64, s.addr],
    )?;
    r.call("setfsgid", libc::SYS_setfsgid, &[ids.gid as u64])?;
    r.call("setfsuid", libc::SYS_setfsuid, &[ids.uid as u64])?;
    // setfsuid reports the old id whatever happens: check the new one.
    let now = r.call("setfsuid", libc::SYS_setfsuid, &[u32::MAX as u64])?;
    if now != ids.uid as u64 {
        return Err(crate::Error::Refused(format!(
            "pid {}: could not take filesystem uid {} to open the image's files",
            r.tid(),
            ids.uid
        )));
    }
    Ok(())
}

/// The task's dumpable flag (PR_SET_DUMPABLE), set after its credentials:
/// every change of ids resets it to fs.suid_dumpable. 2 (readable by root
/// only) cannot be set by prctl; it comes from that very reset, so it is
/// checked before anything is created that the reset gives 2 here.
pub fn restore_dumpable(r: &mut Remote, want: u32) -> Result<()> {
    let now = r.call(
        "prctl(PR_GET_DUMPABLE)",
        libc::SYS_prctl,
        &[libc::PR_GET_DUMPABLE as u64],
    )?;
    if now == want as u64 {
        return Ok(());
    }
    if want > 1 {
        return Err(crate::Error::Refused(format!(
            "pid {}: dumpable is {now}, the image says {want}, which only a credential change with fs.suid_dumpable = {want} gives",
            r.tid()
        )));
    }
    r.call(
        "prctl(PR_SET_DUMPABLE)",
        libc::SYS_prctl,
        &[libc::PR_SET_DUMPABLE as u64, want as u64],
    )?;
    Ok(())
}

/// For an image dumpable of 2: a change of filesystem uid (to another and
/// back, while the task still has the restorer's privileges) makes the
/// kernel reset dumpable to fs.suid_dumpable, the only way to get 2.
pub fn prime_suid_dumpable(r: &mut Remote) -> Result<()> {
    let fsuid = r.call("setfsuid", libc::SYS_setfsuid, &[u32::MAX as u64])?;
    let other = if fsuid == 0 { 1 } else { 0 };
    r.call("setfsuid", libc::SYS_setfsuid, &[other])?;
    r.call("setfsuid", libc::SYS_setfsuid, &[fsuid])?;
    Ok(())
}

/// The credentials task `tid` has now.
pub fn current(tid: crate::sys::Pid) -> Result<Creds> {
    Ok(dump_creds(&crate::procfs::status(tid).map_err(|e| {
        crate::Error::Sys {
            pid: tid,
            what: "read status".into(),
            source: e,
        }
    })?))
}

/// Sets the task's credentials from `cur` (what it has: see `current`)
/// to `c` by injected syscalls.
pub fn restore(r: &mut Remote, s: &Scratch, cur: &Creds, c: &Creds) -> Result<()> {
    if cur == c {
        return Ok(());
    }
    for bit in 0..64u64 {
        if cur.cap_bnd & (1 << bit) != 0 && c.cap_bnd & (1 << bit) == 0 {
            r.call(
                "prctl(PR_CAPBSET_DROP)",
                libc::SYS_prctl,
                &[libc::PR_CAPBSET_DROP as u64, bit],
            )?;
        }
    }
    if cur.groups != c.groups {
        let b: Vec<u8> = c.groups.iter().flat_map(|g| g.to_le_bytes()).collect();
        s.write(0, &b)?;
        r.call(
            "setgroups",
            libc::SYS_setgroups,
            &[c.groups.len() as u64, s.addr],
        )?;
    }
    r.call(
        "setresgid",
        libc::SYS_setresgid,
        &[c.gid as u64, c.egid as u64, c.sgid as u64],
    )?;
    r.call("setfsgid", libc::SYS_setfsgid, &[c.fsgid as u64])?;
    r.call(
        "prctl(PR_SET_KEEPCAPS)",
        libc::SYS_prctl,
        &[libc::PR_SET_KEEPCAPS as u64, 1],
    )?;
    r.call(
        "setresuid",
        libc::SYS_setresuid,
        &[c.uid as u64, c.euid as u64, c.suid as u64],
    )?;
    r.call("setfsuid", libc::SYS_setfsuid, &[c.fsuid as u64])?;
    r.call(
        "prctl(PR_SET_KEEPCAPS)",
        libc::SYS_prctl,
        &[libc::PR_SET_KEEPCAPS as u64, 0],
    )?;
    let lo = |v: u64| (v & 0xffff_ffff) as u32;
    let hi = |v: u64| (v >> 32) as u32;
    let mut b = Vec::new();
    for v in [
        LINUX_CAPABILITY_VERSION_3,
        0,
        lo(c.cap_eff),
        lo(c.cap_prm),
        lo(c.cap_inh),
        hi(c.cap_eff),
        hi(c.cap_prm),
        hi(c.cap_inh),
    ] {
        b.extend_from_slice(&v.to_le_bytes());
    }
    s.write(0, &b)?;
    r.call("capset", libc::SYS_capset, &[s.addr, s.addr + 8])?;
    for bit in 0..64u64 {
        if c.cap_amb & (1 << bit) != 0 {
            r.call(
                "prctl(PR_CAP_AMBIENT_RAISE)",
                libc::SYS_prctl,
                &[
                    libc::PR_CAP_AMBIENT as u64,
                    libc::PR_CAP_AMBIENT_RAISE as u64,
                    bit,
                ],
            )?;
        }
    }
    if c.no_new_privs != 0 {
        r.call(
            "prctl(PR_SET_NO_NEW_PRIVS)",
            libc::SYS_prctl,
            &[libc::PR_SET_NO_NEW_PRIVS as u64, 1, 0, 0, 0],
        )?;
    }
    Ok(())
}
