//! Format regression: a fixed image, built record by record, must decode
//! to exactly the checked-in `inspect` output. A change to the format or
//! to inspect shows up here; if it is intended, regenerate the snapshot with
//! `CKPT_UPDATE_SNAPSHOTS=1 cargo test --test inspect_snapshot`.

use ckpt_image::*;
use std::path::Path;
use std::process::Command;

fn fixed_image() -> Vec<u8> {
    let mut w = ImageWriter::new(std::io::Cursor::new(Vec::new()));
    w.write(&Head {
        magic: HEAD_MAGIC,
        revision: FORMAT_REVISION,
        flags: FLAG_LEAVE_RUNNING,
        time_ns: 1_764_000_000_000_000_000,
        arch: ARCH_X86_64,
        page_size: 4096,
        task_comm_len: 16,
        nsig: 64,
        siginfo_size: 128,
        kernel_release: "6.18.0".into(),
        kernel_version: "#1 SMP".into(),
        machine: "x86_64".into(),
        hostname: "snap".into(),
        writer: "ckpt snapshot".into(),
    })
    .unwrap();
    w.write(&ArchX86_64 {
        xcr0: 0x7,
        xsave_size: 832,
        components: vec![XComponent {
            feature: 2,
            offset: 576,
            size: 256,
        }],
        ..Default::default()
    })
    .unwrap();
    w.write(&File {
        id: 1,
        kind: FILE_CHR,
        flags: 2,
        path: "/dev/null".into(),
        ..Default::default()
    })
    .unwrap();
    w.write(&Pipe {
        id: 1,
        size: 65536,
        ino: 99,
        data: Bytes(b"in flight".to_vec()),
    })
    .unwrap();
    w.write(&Shmem {
        id: 1,
        kind: SHMEM_ANON,
        size: 4096,
        name: "dev/zero".into(),
    })
    .unwrap();
    w.write_pages_flags(0, &[5u8; 4096], PAGES_SHMEM).unwrap();
    w.write(&Process {
        pid: 4242,
        ppid: 1,
        pgid: 4242,
        sid: 4242,
        nr_threads: 1,
        comm: "snap".into(),
        exe: "/usr/bin/snap".into(),
        cwd: "/".into(),
        root: "/".into(),
        umask: 0o22,
        dumpable: 1,
        ..Default::default()
    })
    .unwrap();
    w.write(&Fd {
        fd: 0,
        file_id: 1,
        cloexec: false,
    })
    .unwrap();
    w.write(&Vma {
        start: 0x400000,
        end: 0x402000,
        prot: 5,
        kind: VMA_FILE,
        path: "/usr/bin/snap".into(),
        ..Default::default()
    })
    .unwrap();
    w.write(&Vma {
        start: 0x600000,
        end: 0x601000,
        prot: 3,
        kind: VMA_HEAP,
        path: "[heap]".into(),
        ..Default::default()
    })
    .unwrap();
    w.write(&Thread {
        tid: 4242,
        sigmask: 0x4000,
        ..Default::default()
    })
    .unwrap();
    w.write(&X86Regs {
        tid: 4242,
        rip: 0x401000,
        rsp: 0x7ffd_0000_1000,
        cs: 0x33,
        ss: 0x2b,
        ..Default::default()
    })
    .unwrap();
    w.write_pages(0x600000, &[7u8; 4096]).unwrap();
    w.write(&PageIndex {
        runs: vec![
            IndexedRun {
                addr: 0x700000,
                nr_pages: 1,
            },
            IndexedRun {
                addr: 0x703000,
                nr_pages: 1,
            },
        ],
    })
    .unwrap();
    w.write_pages(0x700000, &[8u8; 8192]).unwrap();
    w.write(&Process {
        pid: 4243,
        ppid: 4242,
        pgid: 4242,
        sid: 4242,
        comm: "zombie".into(),
        state: PROC_ZOMBIE,
        exit_status: 7 << 8,
        ..Default::default()
    })
    .unwrap();
    w.finish().unwrap().into_inner()
}

#[test]
fn inspect_output_is_stable() {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let img = dir.join(format!("snapshot-{}.img", std::process::id()));
    std::fs::write(&img, fixed_image()).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ckpt"))
        .arg("inspect")
        .arg(&img)
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&img);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = String::from_utf8(out.stdout).unwrap();
    let snap = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/snapshots/inspect.txt");
    if std::env::var_os("CKPT_UPDATE_SNAPSHOTS").is_some() {
        std::fs::write(&snap, &got).unwrap();
    }
    let want =
        std::fs::read_to_string(&snap).expect("snapshot missing: run with CKPT_UPDATE_SNAPSHOTS=1");
    assert_eq!(
        got, want,
        "inspect output changed; if intended, regenerate the snapshot"
    );
}
