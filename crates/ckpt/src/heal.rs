//! x86_64 self-healing for injected syscalls (see `remote` and
//! docs/injection.md): the `rt_sigframe` a task returns through when ckpt
//! vanishes, the slot code that runs injected syscalls and then heals, and
//! the gadgets that let the first `mmap` and last `munmap` of the scratch
//! region heal too.
//!
//! The kernel's `rt_sigreturn` (arch/x86/kernel/signal_64.c) reads an
//! `rt_sigframe` at `rsp - 8`, sets the signal mask from `uc_sigmask`, the
//! registers from `uc_mcontext` (and `orig_rax = -1`, restart block =
//! no-restart), the FPU/AVX state from the xsave area `fpstate` points to,
//! and re-applies `uc_stack` as the alternate stack (errors other than
//! EFAULT ignored). So a frame holding a thread's original state, written
//! before its registers are changed, puts it back exactly, whoever runs it.

use crate::sys::Regs;
use std::mem::{offset_of, size_of};

/// `uc_flags`: the frame carries an xsave area and a valid ss, and ss must
/// be restored as is.
pub const UC_FP_XSTATE: u64 = 1;
pub const UC_SIGCONTEXT_SS: u64 = 2;
pub const UC_STRICT_RESTORE_SS: u64 = 4;
/// Marks the end of an extended (xsave) area in a signal frame.
pub const FP_XSTATE_MAGIC1: u32 = 0x4650_5853;
pub const FP_XSTATE_MAGIC2: u32 = 0x4650_5845;
/// Offset of `struct _fpx_sw_bytes` in the FXSAVE area (sw_reserved).
const SW_BYTES: usize = 464;
/// Offset of XSTATE_BV in the xsave header; the legacy area plus the header.
const XSTATE_BV: usize = 512;
const XSAVE_MIN: usize = 576;
/// An `ss_flags` value sigaltstack rejects (EINVAL, which rt_sigreturn
/// ignores): a frame prefilled with it leaves the alternate stack alone
/// until the thread's real one is read into the frame.
pub const SS_NOOP: i32 = 4;

/// `struct sigcontext` (x86_64, arch/x86/include/uapi/asm/sigcontext.h).
#[repr(C)]
#[derive(Default, Clone, Copy)]
pub struct SigContext {
    pub r8: u64,
    pub r9: u64,
    pub r10: u64,
    pub r11: u64,
    pub r12: u64,
    pub r13: u64,
    pub r14: u64,
    pub r15: u64,
    pub rdi: u64,
    pub rsi: u64,
    pub rbp: u64,
    pub rbx: u64,
    pub rdx: u64,
    pub rax: u64,
    pub rcx: u64,
    pub rsp: u64,
    pub rip: u64,
    pub eflags: u64,
    pub cs: u16,
    pub gs: u16,
    pub fs: u16,
    pub ss: u16,
    pub err: u64,
    pub trapno: u64,
    pub oldmask: u64,
    pub cr2: u64,
    pub fpstate: u64,
    pub reserved1: [u64; 8],
}

/// `stack_t`.
#[repr(C)]
#[derive(Default, Clone, Copy)]
pub struct StackT {
    pub ss_sp: u64,
    pub ss_flags: i32,
    pub pad: i32,
    pub ss_size: u64,
}

/// `struct ucontext` as the kernel lays it out (its sigset is 8 bytes).
#[repr(C)]
#[derive(Default, Clone, Copy)]
pub struct UContext {
    pub uc_flags: u64,
    pub uc_link: u64,
    pub uc_stack: StackT,
    pub uc_mcontext: SigContext,
    pub uc_sigmask: u64,
}

/// `struct rt_sigframe` (x86_64): what `rt_sigreturn` finds at `rsp - 8`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct RtSigframe {
    pub pretcode: u64,
    pub uc: UContext,
    pub info: [u8; 128],
}

const _: () = assert!(size_of::<SigContext>() == 256);
const _: () = assert!(offset_of!(SigContext, cs) == 144);
const _: () = assert!(offset_of!(SigContext, fpstate) == 184);
const _: () = assert!(size_of::<StackT>() == 24);
const _: () = assert!(size_of::<UContext>() == 304);
const _: () = assert!(offset_of!(UContext, uc_mcontext) == 40);
const _: () = assert!(offset_of!(UContext, uc_sigmask) == 296);
const _: () = assert!(size_of::<RtSigframe>() == 440);

/// Where `uc_stack` lies in a frame (sigaltstack's old-stack output goes
/// straight there).
pub const UC_STACK_OFF: u64 = (offset_of!(RtSigframe, uc) + offset_of!(UContext, uc_stack)) as u64;
/// Bytes from a frame's start to its xsave area (64-byte aligned).
pub const XSAVE_OFF: usize = 448;
const _: () = assert!(XSAVE_OFF >= size_of::<RtSigframe>() && XSAVE_OFF.is_multiple_of(64));

fn put(b: &mut [u8], off: usize, v: &[u8]) {
    b[off..off + v.len()].copy_from_slice(v);
}

impl RtSigframe {
    /// The frame that gives a thread back `regs` (already fixed up for
    /// syscall restart), signal mask `mask` and the xsave area at `fpstate`.
    pub fn new(regs: &Regs, mask: u64, fpstate: u64, pretcode: u64) -> Self {
        let r = regs;
        let sc = SigContext {
            r8: r.r8,
            r9: r.r9,
            r10: r.r10,
            r11: r.r11,
            r12: r.r12,
            r13: r.r13,
            r14: r.r14,
            r15: r.r15,
            rdi: r.rdi,
            rsi: r.rsi,
            rbp: r.rbp,
            rbx: r.rbx,
            rdx: r.rdx,
            rax: r.rax,
            rcx: r.rcx,
            rsp: r.rsp,
            rip: r.rip,
            eflags: r.eflags,
            cs: r.cs as u16,
            gs: r.gs as u16,
            fs: r.fs as u16,
            ss: r.ss as u16,
            fpstate,
            ..Default::default()
        };
        RtSigframe {
            pretcode,
            uc: UContext {
                uc_flags: UC_FP_XSTATE | UC_SIGCONTEXT_SS | UC_STRICT_RESTORE_SS,
                uc_link: 0,
                uc_stack: StackT {
                    ss_flags: SS_NOOP,
                    ..Default::default()
                },
                uc_mcontext: sc,
                uc_sigmask: mask,
            },
            info: [0; 128],
        }
    }

    /// The frame's bytes, field by field at their `repr(C)` offsets.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = vec![0u8; size_of::<RtSigframe>()];
        put(&mut b, 0, &self.pretcode.to_le_bytes());
        let uc = offset_of!(RtSigframe, uc);
        let u = &self.uc;
        put(&mut b, uc, &u.uc_flags.to_le_bytes());
        put(&mut b, uc + 8, &u.uc_link.to_le_bytes());
        let st = uc + offset_of!(UContext, uc_stack);
        put(&mut b, st, &u.uc_stack.ss_sp.to_le_bytes());
        put(&mut b, st + 8, &u.uc_stack.ss_flags.to_le_bytes());
        put(&mut b, st + 16, &u.uc_stack.ss_size.to_le_bytes());
        let mc = uc + offset_of!(UContext, uc_mcontext);
        let s = &u.uc_mcontext;
        let gp = [
            s.r8, s.r9, s.r10, s.r11, s.r12, s.r13, s.r14, s.r15, s.rdi, s.rsi, s.rbp, s.rbx,
            s.rdx, s.rax, s.rcx, s.rsp, s.rip, s.eflags,
        ];
        for (i, v) in gp.iter().enumerate() {
            put(&mut b, mc + i * 8, &v.to_le_bytes());
        }
        let seg = mc + offset_of!(SigContext, cs);
        for (i, v) in [s.cs, s.gs, s.fs, s.ss].iter().enumerate() {
            put(&mut b, seg + i * 2, &v.to_le_bytes());
        }
        put(
            &mut b,
            mc + offset_of!(SigContext, fpstate),
            &s.fpstate.to_le_bytes(),
        );
        put(
            &mut b,
            uc + offset_of!(UContext, uc_sigmask),
            &u.uc_sigmask.to_le_bytes(),
        );
        b
    }
}

/// The xsave area of a thread (its NT_X86_XSTATE regset, standard format)
/// made acceptable to rt_sigreturn. ptrace puts XCR0 in the software-
/// reserved bytes (the gdb convention), where a signal frame needs
/// `struct _fpx_sw_bytes` (magic1, extended size, features, size) and
/// FP_XSTATE_MAGIC2 after the area: without them the kernel silently
/// restores only the legacy x87/SSE part and resets the AVX state. The
/// size covers only the components present (XSTATE_BV), so it fits every
/// task's signal frame (one without AMX permission has a smaller one than
/// the regset's).
pub fn sigframe_xstate(regset: &[u8], component_end: impl Fn(u32) -> usize) -> Option<Vec<u8>> {
    if regset.len() < XSAVE_MIN {
        return None;
    }
    let bv = u64::from_le_bytes(regset[XSTATE_BV..XSTATE_BV + 8].try_into().ok()?);
    let features = bv | 3;
    let size = (2..64)
        .filter(|i| features & (1 << i) != 0)
        .map(&component_end)
        .fold(XSAVE_MIN, usize::max);
    if size > regset.len() {
        return None;
    }
    let mut x = regset[..size].to_vec();
    x[SW_BYTES..XSTATE_BV].fill(0);
    put(&mut x, SW_BYTES, &FP_XSTATE_MAGIC1.to_le_bytes());
    put(&mut x, SW_BYTES + 4, &(size as u32 + 4).to_le_bytes()); // extended_size
    put(&mut x, SW_BYTES + 8, &features.to_le_bytes()); // xfeatures
    put(&mut x, SW_BYTES + 16, &(size as u32).to_le_bytes()); // xstate_size
    x.extend_from_slice(&FP_XSTATE_MAGIC2.to_le_bytes());
    Some(x)
}

/// End offset of xsave component `i` in the standard format on this CPU.
pub fn cpu_component_end(i: u32) -> usize {
    let (size, offset, _, _) = crate::sys::cpuid(0xd, i);
    (size + offset) as usize
}

/// A healing frame at `at`: the `rt_sigframe`, then (64-byte aligned at
/// `XSAVE_OFF`) the xsave area it points to.
pub fn frame_image(at: u64, regs: &Regs, mask: u64, xsave: &[u8], pretcode: u64) -> Vec<u8> {
    let mut b = RtSigframe::new(regs, mask, at + XSAVE_OFF as u64, pretcode).to_bytes();
    b.resize(XSAVE_OFF, 0);
    b.extend_from_slice(xsave);
    b
}

/// Bytes a frame image takes for an xsave area of `xsave_len` bytes.
pub fn frame_len(xsave_len: usize) -> usize {
    XSAVE_OFF + xsave_len.next_multiple_of(64)
}

/// `syscall`.
pub const SYSCALL: [u8; 2] = [0x0f, 0x05];
/// One heal step: `mov $3,%eax; mov $fd,%edi; syscall` (close(fd)).
pub const CLOSE_LEN: u64 = 12;
/// Both heal tails: `unmap_tail`, or nops and `tail`.
pub const TAIL_LEN: u64 = 49;
const RT_TAIL_LEN: usize = 16;

/// The close step for `fd`; its last two bytes are its `syscall`.
pub fn close_step(fd: u32) -> [u8; CLOSE_LEN as usize] {
    let mut b = [0u8; CLOSE_LEN as usize];
    b[0] = 0xb8;
    b[1..5].copy_from_slice(&3u32.to_le_bytes());
    b[5] = 0xbf;
    b[6..10].copy_from_slice(&fd.to_le_bytes());
    b[10..12].copy_from_slice(&SYSCALL);
    b
}

/// The heal tail at `at`, returning through the frame at `frame`: `nop`s,
/// then `mov $15,%eax; lea frame+8(%rip),%rsp; syscall (rt_sigreturn); ud2`.
pub fn tail(at: u64, frame: u64) -> [u8; TAIL_LEN as usize] {
    let mut b = [0x90u8; TAIL_LEN as usize];
    let o = TAIL_LEN as usize - RT_TAIL_LEN;
    b[o] = 0xb8;
    b[o + 1..o + 5].copy_from_slice(&15u32.to_le_bytes());
    // lea disp32(%rip),%rsp: the displacement counts from the next insn.
    b[o + 5..o + 8].copy_from_slice(&[0x48, 0x8d, 0x25]);
    let next = at + o as u64 + 12;
    let disp = (frame + 8).wrapping_sub(next) as i64;
    b[o + 8..o + 12].copy_from_slice(&(disp as i32).to_le_bytes());
    b[o + 12..o + 14].copy_from_slice(&SYSCALL);
    b[o + 14..o + 16].copy_from_slice(&[0x0f, 0x0b]);
    b
}

/// The heal tail that also unmaps the scratch region the code lies in:
/// `mov $11,%eax; movabs $addr,%rdi; movabs $len,%rsi; movabs $frame,%rsp;
/// movabs $syscall_ret,%rcx; jmp *%rcx; ud2`. The munmap runs from the
/// `syscall; ret` gadget, whose `ret` pops the frame's pretcode (the
/// restorer): rt_sigreturn then reads the frame at `frame` on the stack.
pub fn unmap_tail(addr: u64, len: u64, frame: u64, syscall_ret: u64) -> [u8; TAIL_LEN as usize] {
    let mut b = [0u8; TAIL_LEN as usize];
    b[0] = 0xb8;
    b[1..5].copy_from_slice(&11u32.to_le_bytes());
    for (i, (reg, v)) in [
        (0xbf, addr),
        (0xbe, len),
        (0xbc, frame),
        (0xb9, syscall_ret),
    ]
    .into_iter()
    .enumerate()
    {
        let o = 5 + i * 10;
        b[o] = 0x48;
        b[o + 1] = reg;
        b[o + 2..o + 10].copy_from_slice(&v.to_le_bytes());
    }
    b[45..47].copy_from_slice(&[0xff, 0xe1]);
    b[47..49].copy_from_slice(&[0x0f, 0x0b]);
    b
}

/// A `syscall` followed only by register-clearing `xor`s (none of rsp) and
/// `ret` (e.g. the vDSO's clock_getres fallback): run from it with rsp at
/// a frame whose pretcode is a restorer, a syscall returns into
/// rt_sigreturn. Returns its offset in `code`.
pub fn find_syscall_ret(code: &[u8]) -> Option<usize> {
    let mut i = 0;
    while i + 2 < code.len() {
        if code[i..i + 2] == SYSCALL {
            let mut j = i + 2;
            loop {
                match code.get(j..) {
                    Some([0xc3, ..]) => return Some(i),
                    // xor r32,r32 (register form), not of esp.
                    Some([0x31, m, ..]) if m >> 6 == 3 && m & 7 != 4 => j += 2,
                    // REX.R/B/W forms: the destination is r8-r15 or a 64-bit
                    // register; with REX.B clear it must not be rsp.
                    Some([rex @ 0x40..=0x4f, 0x31, m, ..])
                        if m >> 6 == 3 && (m & 7 != 4 || rex & 1 == 1) =>
                    {
                        j += 3
                    }
                    Some([0x90, ..]) => j += 1,
                    _ => break,
                }
            }
        }
        i += 1;
    }
    None
}

/// `mov $15,%rax; syscall` or `mov $15,%eax; syscall` (libc's signal
/// restorer, __restore_rt): its offset in `code`.
pub fn find_restorer(code: &[u8]) -> Option<usize> {
    const LONG: [u8; 9] = [0x48, 0xc7, 0xc0, 0x0f, 0, 0, 0, 0x0f, 0x05];
    const SHORT: [u8; 7] = [0xb8, 0x0f, 0, 0, 0, 0x0f, 0x05];
    code.windows(LONG.len())
        .position(|w| w == LONG)
        .or_else(|| code.windows(SHORT.len()).position(|w| w == SHORT))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The restorer our libc gives its handlers (which the test runtime
    /// installs) is one `find_restorer` accepts: what checkpoint relies on
    /// before it searches a task's code.
    #[test]
    fn own_restorer_is_a_restorer() {
        use std::os::unix::fs::FileExt;
        let a = crate::sys::own_restorer().expect("a handler with SA_RESTORER");
        let mut code = [0u8; 9];
        std::fs::File::open("/proc/self/mem")
            .and_then(|m| m.read_exact_at(&mut code, a))
            .unwrap();
        assert_eq!(find_restorer(&code), Some(0), "{code:02x?}");
    }

    fn regs() -> Regs {
        // SAFETY: plain integers.
        let mut r: Regs = unsafe { std::mem::zeroed() };
        r.rax = 0x1111;
        r.rip = 0x40_1000;
        r.rsp = 0x7ff0_0000;
        r.eflags = 0x246;
        r.cs = 0x33;
        r.ss = 0x2b;
        r.r8 = 8;
        r.r15 = 15;
        r
    }

    fn u64_at(b: &[u8], off: usize) -> u64 {
        u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
    }

    #[test]
    fn frame_layout() {
        let at = 0x10_0000;
        let b = frame_image(at, &regs(), 0xdead_beef, &[0xaa; 64], 0x5555);
        assert_eq!(b.len(), frame_len(64));
        assert_eq!(u64_at(&b, 0), 0x5555, "pretcode");
        assert_eq!(u64_at(&b, 8), 7, "uc_flags");
        assert_eq!(u64_at(&b, 16), 0, "uc_link");
        assert_eq!(
            u32::from_le_bytes(b[32..36].try_into().unwrap()) as i32,
            SS_NOOP
        );
        assert_eq!(UC_STACK_OFF, 24);
        let mc = 8 + 40;
        assert_eq!(u64_at(&b, mc), 8, "r8 first");
        assert_eq!(u64_at(&b, mc + 7 * 8), 15, "r15");
        assert_eq!(u64_at(&b, mc + 13 * 8), 0x1111, "rax");
        assert_eq!(u64_at(&b, mc + 15 * 8), 0x7ff0_0000, "rsp");
        assert_eq!(u64_at(&b, mc + 16 * 8), 0x40_1000, "rip");
        assert_eq!(
            u16::from_le_bytes(b[mc + 144..mc + 146].try_into().unwrap()),
            0x33
        );
        assert_eq!(
            u16::from_le_bytes(b[mc + 150..mc + 152].try_into().unwrap()),
            0x2b
        );
        assert_eq!(u64_at(&b, mc + 184), at + XSAVE_OFF as u64, "fpstate");
        assert_eq!(u64_at(&b, 8 + 296), 0xdead_beef, "uc_sigmask");
        assert_eq!(&b[XSAVE_OFF..], &[0xaa; 64]);
    }

    #[test]
    fn code() {
        let c = close_step(7);
        assert_eq!(c, [0xb8, 3, 0, 0, 0, 0xbf, 7, 0, 0, 0, 0x0f, 0x05]);
        let t = tail(0x1000, 0x800);
        let o = TAIL_LEN as usize - 16;
        assert!(t[..o].iter().all(|&b| b == 0x90));
        assert_eq!(&t[o..o + 5], &[0xb8, 15, 0, 0, 0]);
        // lea ends 12 bytes into the sequence; the frame + 8 is 0x808.
        let disp = i32::from_le_bytes(t[o + 8..o + 12].try_into().unwrap());
        assert_eq!(0x1000 + o as i64 + 12 + disp as i64, 0x808);
        assert_eq!(&t[o + 12..], &[0x0f, 0x05, 0x0f, 0x0b]);
        let u = unmap_tail(0x1111, 0x2222, 0x3333, 0x4444);
        assert_eq!(&u[..5], &[0xb8, 11, 0, 0, 0]);
        assert_eq!(&u[5..7], &[0x48, 0xbf]);
        assert_eq!(u64::from_le_bytes(u[7..15].try_into().unwrap()), 0x1111);
        assert_eq!(&u[25..27], &[0x48, 0xbc]);
        assert_eq!(u64::from_le_bytes(u[27..35].try_into().unwrap()), 0x3333);
        assert_eq!(&u[45..], &[0xff, 0xe1, 0x0f, 0x0b]);
    }

    #[test]
    fn xstate_magic() {
        let mut r = vec![0u8; 1024];
        // ptrace's regset has XCR0 there.
        r[SW_BYTES..SW_BYTES + 8].copy_from_slice(&0x2e7u64.to_le_bytes());
        r[XSTATE_BV..XSTATE_BV + 8].copy_from_slice(&7u64.to_le_bytes()); // x87, SSE, AVX
        let x = sigframe_xstate(&r, |i| if i == 2 { 576 + 256 } else { 4096 }).unwrap();
        assert_eq!(x.len(), 832 + 4);
        assert_eq!(
            u32::from_le_bytes(x[832..].try_into().unwrap()),
            FP_XSTATE_MAGIC2
        );
        assert_eq!(
            u32::from_le_bytes(x[SW_BYTES + 16..SW_BYTES + 20].try_into().unwrap()),
            832
        );
        assert_eq!(
            u32::from_le_bytes(x[SW_BYTES + 4..SW_BYTES + 8].try_into().unwrap()),
            836
        );
        assert_eq!(
            u32::from_le_bytes(x[SW_BYTES..SW_BYTES + 4].try_into().unwrap()),
            FP_XSTATE_MAGIC1
        );
        assert_eq!(
            u64::from_le_bytes(x[SW_BYTES + 8..SW_BYTES + 16].try_into().unwrap()),
            7
        );
        assert!(sigframe_xstate(&r[..500], cpu_component_end).is_none());
    }

    #[test]
    fn gadgets() {
        let code = [0x90, 0x0f, 0x05, 0x31, 0xd2, 0x45, 0x31, 0xdb, 0xc3];
        assert_eq!(find_syscall_ret(&code), Some(1));
        // A pop before the ret moves rsp: not usable.
        assert_eq!(find_syscall_ret(&[0x0f, 0x05, 0x5d, 0xc3]), None);
        // xor %esp,%esp clobbers the stack pointer.
        assert_eq!(find_syscall_ret(&[0x0f, 0x05, 0x31, 0xe4, 0xc3]), None);
        let r = [0, 0x48, 0xc7, 0xc0, 0x0f, 0, 0, 0, 0x0f, 0x05];
        assert_eq!(find_restorer(&r), Some(1));
    }
}
