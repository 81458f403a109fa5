//! Credentials. Restore runs as the restorer and only ever changes ids and
//! capabilities the kernel lets it change, so an image can never grant more
//! than the user running `ckpt restart` already has.

use crate::error::Result;
use crate::remote::Remote;
use crate::task::{dump_creds, Scratch};
use ckpt_image::Creds;

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// Sets the task's credentials to `c` by injected syscalls.
pub fn restore(r: &mut Remote, s: &Scratch, c: &Creds) -> Result<()> {
    let pid = r.tid();
    let cur = dump_creds(&crate::procfs::status(pid).map_err(|e| crate::Error::Sys {
        pid,
        what: "read status".into(),
        source: e,
    })?);
    if &cur == c {
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
