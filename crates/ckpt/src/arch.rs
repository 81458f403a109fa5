//! x86_64: general registers, xsave area, debug registers, the arch record,
//! syscall-restart rules and the validation done before trusting an image's
//! registers (the seeds' x86 patch).

use crate::error::{Error, Result};
use crate::sys::{self, Regs};
use ckpt_image::{ArchX86_64, X86Regs, XComponent};

const ERESTARTSYS: i64 = -512;
const ERESTARTNOINTR: i64 = -513;
const ERESTARTNOHAND: i64 = -514;
pub const ERESTART_RESTARTBLOCK: i64 = -516;
const NR_RESTART_SYSCALL: u64 = 219;

/// User code and stack selectors on x86_64 Linux.
const USER_CS: u64 = 0x33;
const USER_DS: u64 = 0x2b;
/// Highest user address + 1 with 4-level paging (TASK_SIZE_MAX).
pub const TASK_SIZE: u64 = 0x7fff_ffff_f000;
/// eflags bits user space may set (FLAG_MASK in the kernel's ptrace.c).
const FLAG_MASK: u64 = 0x0000_0000_0025_4dd5 | (1 << 1);

const NR_NANOSLEEP: u64 = 35;
const NR_CLOCK_NANOSLEEP: u64 = 230;

/// Whether `rax` holds one of the kernel's syscall-restart codes.
pub fn is_restart_code(rax: u64) -> bool {
    matches!(
        rax as i64,
        ERESTARTSYS | ERESTARTNOINTR | ERESTARTNOHAND | ERESTART_RESTARTBLOCK
    )
}

/// The registers to leave a thread with, in an interrupt stop, so that the
/// kernel itself re-runs the syscall it was interrupted in, or fails it
/// with EINTR when a handled signal comes first; `None` when it was in no
/// such syscall. `same_task` as in `restart_fixup`: a restored task has no
/// restart block, so a call that would continue through one is re-issued
/// (with the time it had left) under ERESTARTNOHAND's rules instead.
pub fn as_interrupted(saved: &Regs, same_task: bool) -> Option<Regs> {
    if (saved.orig_rax as i64) < 0 || !is_restart_code(saved.rax) {
        return None;
    }
    if same_task || saved.rax as i64 != ERESTART_RESTARTBLOCK {
        return Some(*saved);
    }
    let mut r = *saved;
    restart_fixup(&mut r, false); // the arguments it is re-issued with
    r.rip = saved.rip;
    r.orig_rax = saved.orig_rax;
    r.rax = ERESTARTNOHAND as u64;
    Some(r)
}

/// Rewrites registers of a task stopped inside an interrupted syscall so that
/// it re-runs the call when resumed. `same_task`: the task resumes in the
/// kernel context it was interrupted in (leave-running), so its restart
/// block is still valid and `restart_syscall` continues the call. A restored
/// task has no restart block: the call is issued again, and a relative
/// sleep whose caller passed a `rem` buffer (which the kernel filled with
/// the time left when it was interrupted) sleeps for that time only.
pub fn restart_fixup(r: &mut Regs, same_task: bool) {
    if (r.orig_rax as i64) < 0 {
        return;
    }
    match r.rax as i64 {
        ERESTARTSYS | ERESTARTNOINTR | ERESTARTNOHAND => {
            r.rax = r.orig_rax;
            r.rip -= 2;
        }
        ERESTART_RESTARTBLOCK if same_task => {
            r.rax = NR_RESTART_SYSCALL;
            r.rip -= 2;
        }
        ERESTART_RESTARTBLOCK => {
            match r.orig_rax {
                NR_NANOSLEEP if r.rsi != 0 => r.rdi = r.rsi,
                NR_CLOCK_NANOSLEEP if r.r10 != 0 => r.rdx = r.r10,
                _ => {}
            }
            r.rax = r.orig_rax;
            r.rip -= 2;
        }
        _ => {}
    }
    r.orig_rax = u64::MAX;
}

pub fn regs_to_record(tid: i32, r: &Regs) -> X86Regs {
    X86Regs {
        tid,
        r15: r.r15,
        r14: r.r14,
        r13: r.r13,
        r12: r.r12,
        rbp: r.rbp,
        rbx: r.rbx,
        r11: r.r11,
        r10: r.r10,
        r9: r.r9,
        r8: r.r8,
        rax: r.rax,
        rcx: r.rcx,
        rdx: r.rdx,
        rsi: r.rsi,
        rdi: r.rdi,
        orig_rax: r.orig_rax,
        rip: r.rip,
        cs: r.cs,
        eflags: r.eflags,
        rsp: r.rsp,
        ss: r.ss,
        fs_base: r.fs_base,
        gs_base: r.gs_base,
        ds: r.ds,
        es: r.es,
        fs: r.fs,
        gs: r.gs,
    }
}

pub fn record_to_regs(x: &X86Regs) -> Regs {
    Regs {
        r15: x.r15,
        r14: x.r14,
        r13: x.r13,
        r12: x.r12,
        rbp: x.rbp,
        rbx: x.rbx,
        r11: x.r11,
        r10: x.r10,
        r9: x.r9,
        r8: x.r8,
        rax: x.rax,
        rcx: x.rcx,
        rdx: x.rdx,
        rsi: x.rsi,
        rdi: x.rdi,
        orig_rax: x.orig_rax,
        rip: x.rip,
        cs: x.cs,
        eflags: x.eflags,
        rsp: x.rsp,
        ss: x.ss,
        fs_base: x.fs_base,
        gs_base: x.gs_base,
        ds: x.ds,
        es: x.es,
        fs: x.fs,
        gs: x.gs,
    }
}

fn user_addr(v: u64) -> bool {
    v < TASK_SIZE
}

fn data_selector_ok(s: u64) -> bool {
    // Null selector, or a user-privilege (RPL 3) GDT selector.
    s == 0 || (s & 3 == 3 && s < 0x10000 && s & 4 == 0)
}

/// Refuses registers a task could not legitimately have had (the seeds'
/// restore_cpu_regs checks).
pub fn validate_regs(x: &X86Regs) -> Result<()> {
    let bad = |what: String| {
        Err(Error::Refused(format!(
            "thread {}: invalid registers in image: {what}",
            x.tid
        )))
    };
    if x.cs != USER_CS {
        return bad(format!(
            "cs {:#x} is not the 64-bit user code segment",
            x.cs
        ));
    }
    if x.ss != USER_DS {
        return bad(format!("ss {:#x} is not the user data segment", x.ss));
    }
    for (n, s) in [("ds", x.ds), ("es", x.es), ("fs", x.fs), ("gs", x.gs)] {
        if !data_selector_ok(s) {
            return bad(format!("{n} selector {s:#x} is not a user selector"));
        }
    }
    if x.eflags & !FLAG_MASK & !(1 << 9) != 0 {
        return bad(format!("eflags {:#x} has privileged bits set", x.eflags));
    }
    for (n, v) in [
        ("rip", x.rip),
        ("fs_base", x.fs_base),
        ("gs_base", x.gs_base),
    ] {
        if !user_addr(v) {
            return bad(format!("{n} {v:#x} is not a user address"));
        }
    }
    Ok(())
}

/// Debug registers: breakpoints only on user addresses, no reserved bits.
pub fn validate_debugregs(tid: i32, dr: &[u64; 8]) -> Result<()> {
    for (i, v) in dr.iter().enumerate().take(4) {
        if !user_addr(*v) {
            return Err(Error::Refused(format!(
                "thread {tid}: debug register dr{i} = {v:#x} is not a user address"
            )));
        }
    }
    // dr7: general-detect (bit 13) and the reserved bits 14-15 must be clear.
    if dr[7] & (0b111 << 13) != 0 || dr[7] >> 32 != 0 {
        return Err(Error::Refused(format!(
            "thread {tid}: debug control register dr7 = {:#x} sets reserved or privileged bits",
            dr[7]
        )));
    }
    Ok(())
}

/// Offset of the software-reserved bytes in the FXSAVE area, where Linux
/// puts `struct _fpx_sw_bytes` (magic1, extended_size, xfeatures, xstate_size).
const SW_BYTES: usize = 464;
const FP_XSTATE_MAGIC1: u32 = 0x4650_5853;
/// Offset of XSTATE_BV in the xsave header.
const XSTATE_BV: usize = 512;

/// XCR0 recorded by the kernel in an NT_X86_XSTATE area.
pub fn xstate_xfeatures(area: &[u8]) -> Option<u64> {
    let magic = u32::from_le_bytes(area.get(SW_BYTES..SW_BYTES + 4)?.try_into().ok()?);
    if magic != FP_XSTATE_MAGIC1 {
        return None;
    }
    Some(u64::from_le_bytes(
        area.get(SW_BYTES + 8..SW_BYTES + 16)?.try_into().ok()?,
    ))
}

/// The xsave components present in an xsave area (XSTATE_BV).
pub fn xstate_bv(area: &[u8]) -> u64 {
    area.get(XSTATE_BV..XSTATE_BV + 8)
        .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
        .unwrap_or(0)
}

/// Names of xsave feature bits, for error messages.
pub fn feature_names(mask: u64) -> String {
    const NAMES: [&str; 20] = [
        "x87",
        "SSE",
        "AVX",
        "MPX-BNDREGS",
        "MPX-BNDCSR",
        "AVX-512-opmask",
        "AVX-512-ZMM_Hi256",
        "AVX-512-Hi16_ZMM",
        "PT",
        "PKRU",
        "PASID",
        "CET-U",
        "CET-S",
        "HDC",
        "UINTR",
        "LBR",
        "HWP",
        "AMX-TILECFG",
        "AMX-TILEDATA",
        "APX",
    ];
    (0..64)
        .filter(|b| mask & (1 << b) != 0)
        .map(|b| NAMES.get(b).map_or(format!("bit{b}"), |n| n.to_string()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The arch record of this CPU, for an image whose xsave areas have `size`
/// bytes and features `xcr0`.
pub fn arch_record(xcr0: u64, size: u32) -> ArchX86_64 {
    let (_, _, c1, d1) = sys::cpuid(1, 0);
    let (_, b7, c7, d7) = sys::cpuid(7, 0);
    let components = (2..64)
        .filter(|i| xcr0 & (1u64 << i) != 0)
        .map(|i| {
            let (size, offset, _, _) = sys::cpuid(0xd, i);
            XComponent {
                feature: i,
                offset,
                size,
            }
        })
        .collect();
    ArchX86_64 {
        xcr0,
        xsave_size: size,
        cpuid_1_ecx: c1,
        cpuid_1_edx: d1,
        cpuid_7_ebx: b7,
        cpuid_7_ecx: c7,
        cpuid_7_edx: d7,
        components,
    }
}

/// Checks that this CPU can take the image's register state: every xsave
/// feature the image uses is enabled here, with the same layout, and the
/// CPU features user code may have detected with CPUID are present.
pub fn validate_arch(a: &ArchX86_64) -> Result<()> {
    let here = sys::xcr0();
    let missing = a.xcr0 & !here;
    if missing != 0 {
        return Err(Error::Refused(format!(
            "this CPU lacks xsave features the image uses: {} (image XCR0 {:#x}, here {:#x}); restart on a CPU that has them",
            feature_names(missing),
            a.xcr0,
            here
        )));
    }
    for c in &a.components {
        let (size, offset, _, _) = sys::cpuid(0xd, c.feature);
        if size != c.size || offset != c.offset {
            return Err(Error::Refused(format!(
                "xsave component {} is laid out differently on this CPU ({}@{} here, {}@{} in the image); cross-CPU restore of this state is not supported",
                feature_names(1 << c.feature),
                size,
                offset,
                c.size,
                c.offset
            )));
        }
    }
    let (_, _, c1, d1) = sys::cpuid(1, 0);
    let (_, b7, c7, d7) = sys::cpuid(7, 0);
    // Bits that change across hypervisors without affecting user code
    // (OSXSAVE is OS state, hypervisor bit, APIC ids) are not compared.
    let ignore_c1 = (1 << 27) | (1 << 31);
    let pairs = [
        ("cpuid(1).ecx", a.cpuid_1_ecx & !ignore_c1, c1 & !ignore_c1),
        ("cpuid(1).edx", a.cpuid_1_edx, d1),
        ("cpuid(7).ebx", a.cpuid_7_ebx, b7),
        ("cpuid(7).ecx", a.cpuid_7_ecx, c7),
        ("cpuid(7).edx", a.cpuid_7_edx, d7),
    ];
    for (n, img, cur) in pairs {
        if img & !cur != 0 {
            return Err(Error::Refused(format!(
                "this CPU lacks features the checkpointed program may use: {n} bits {:#x}; restart on the same kind of CPU",
                img & !cur
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn regs() -> Regs {
        // SAFETY: plain integers.
        let mut r: Regs = unsafe { std::mem::zeroed() };
        r.cs = USER_CS;
        r.ss = USER_DS;
        r.eflags = 0x246;
        r.rip = 0x401000;
        r
    }

    #[test]
    fn restart_rules() {
        let mut r = regs();
        r.orig_rax = 0; // read
        r.rax = ERESTARTSYS as u64;
        r.rip = 0x1002;
        restart_fixup(&mut r, false);
        assert_eq!((r.rax, r.rip, r.orig_rax), (0, 0x1000, u64::MAX));

        let mut r = regs();
        r.orig_rax = NR_NANOSLEEP;
        r.rax = ERESTART_RESTARTBLOCK as u64;
        r.rip = 0x1002;
        r.rdi = 0x5000; // req
        r.rsi = 0x6000; // rem, filled with the time left
        restart_fixup(&mut r, false);
        assert_eq!((r.rax, r.rip, r.rdi), (NR_NANOSLEEP, 0x1000, 0x6000));

        let mut r = regs();
        r.orig_rax = NR_NANOSLEEP;
        r.rax = ERESTART_RESTARTBLOCK as u64;
        r.rip = 0x1002;
        r.rdi = 0x5000;
        r.rsi = 0; // no rem: sleep the whole request again
        restart_fixup(&mut r, false);
        assert_eq!((r.rax, r.rip, r.rdi), (NR_NANOSLEEP, 0x1000, 0x5000));

        let mut r = regs();
        r.orig_rax = 35;
        r.rax = ERESTART_RESTARTBLOCK as u64;
        r.rip = 0x1002;
        restart_fixup(&mut r, true);
        assert_eq!((r.rax, r.rip), (NR_RESTART_SYSCALL, 0x1000));

        let mut r = regs();
        r.orig_rax = u64::MAX;
        r.rax = ERESTARTSYS as u64;
        restart_fixup(&mut r, false);
        assert_eq!(r.rax as i64, ERESTARTSYS, "not in a syscall: untouched");
    }

    #[test]
    fn validation_refuses_kernel_state() {
        let ok = regs_to_record(1, &regs());
        validate_regs(&ok).unwrap();
        let mut x = ok.clone();
        x.cs = 0x10;
        assert!(validate_regs(&x).is_err());
        let mut x = ok.clone();
        x.eflags |= 3 << 12; // IOPL 3
        assert!(validate_regs(&x).is_err());
        let mut x = ok.clone();
        x.rip = 0xffff_8000_0000_0000;
        assert!(validate_regs(&x).is_err());
        let mut x = ok.clone();
        x.fs = 0x10;
        assert!(validate_regs(&x).is_err());
        let mut dr = [0u64; 8];
        validate_debugregs(1, &dr).unwrap();
        dr[0] = 0xffff_ffff_ff60_0000;
        assert!(validate_debugregs(1, &dr).is_err());
        dr[0] = 0;
        dr[7] = 1 << 13;
        assert!(validate_debugregs(1, &dr).is_err());
    }

    #[test]
    fn own_cpu_validates() {
        let a = arch_record(sys::xcr0(), 4096);
        validate_arch(&a).unwrap();
        let mut b = a.clone();
        b.xcr0 |= 1 << 40;
        let e = validate_arch(&b).unwrap_err().to_string();
        assert!(e.contains("bit40"), "{e}");
    }
}
