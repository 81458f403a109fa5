//! All /proc reading in one place.

use crate::sys::Pid;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

fn path(pid: Pid, what: &str) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}/{what}"))
}

/// Reads /proc/PID/WHAT as text.
pub fn read(pid: Pid, what: &str) -> io::Result<String> {
    fs::read_to_string(path(pid, what))
}

/// Reads /proc/PID/WHAT as bytes.
pub fn read_bytes(pid: Pid, what: &str) -> io::Result<Vec<u8>> {
    fs::read(path(pid, what))
}

/// readlink /proc/PID/WHAT as raw bytes.
pub fn link(pid: Pid, what: &str) -> io::Result<Vec<u8>> {
    Ok(fs::read_link(path(pid, what))?
        .as_os_str()
        .as_bytes()
        .to_vec())
}

/// Thread ids of a process.
pub fn tids(pid: Pid) -> io::Result<Vec<Pid>> {
    let mut v: Vec<Pid> = fs::read_dir(path(pid, "task"))?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    v.sort_unstable();
    Ok(v)
}

/// Children of every thread of a process.
pub fn children(pid: Pid) -> io::Result<Vec<Pid>> {
    let mut v = Vec::new();
    for t in tids(pid)? {
        let s = fs::read_to_string(format!("/proc/{pid}/task/{t}/children")).unwrap_or_default();
        v.extend(s.split_whitespace().filter_map(|x| x.parse::<Pid>().ok()));
    }
    v.sort_unstable();
    Ok(v)
}

/// Whether thread `tid` of `pid` still runs (listed, and neither a zombie
/// nor dead).
pub fn thread_alive(pid: Pid, tid: Pid) -> bool {
    fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat"))
        .ok()
        .and_then(|s| {
            let state = s.rsplit_once(')')?.1.split_whitespace().next()?.to_string();
            Some(state != "Z" && state != "X")
        })
        .unwrap_or(false)
}

/// The fields of /proc/PID/stat ckpt uses.
#[derive(Debug, Default, Clone)]
pub struct Stat {
    pub comm: Vec<u8>,
    pub state: u8,
    pub ppid: Pid,
    pub pgrp: Pid,
    pub session: Pid,
    pub start_code: u64,
    pub end_code: u64,
    pub start_stack: u64,
    pub start_data: u64,
    pub end_data: u64,
    pub start_brk: u64,
    pub arg_start: u64,
    pub arg_end: u64,
    pub env_start: u64,
    pub env_end: u64,
    /// Wait status of an exited task (field 52).
    pub exit_code: i32,
    /// Nice value (field 19).
    pub nice: i32,
    /// The kernel's PF_* flags of the task (field 9).
    pub flags: u64,
}

pub fn stat(pid: Pid) -> io::Result<Stat> {
    stat_of(pid, "stat")
}

/// The stat of one thread (task/TID/stat).
pub fn thread_stat(pid: Pid, tid: Pid) -> io::Result<Stat> {
    stat_of(pid, &format!("task/{tid}/stat"))
}

fn stat_of(pid: Pid, what: &str) -> io::Result<Stat> {
    let raw = read_bytes(pid, what)?;
    parse_stat(&raw).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("cannot parse /proc/{pid}/stat"),
        )
    })
}

fn parse_stat(raw: &[u8]) -> Option<Stat> {
    // comm is in parentheses and may itself contain ") ".
    let open = raw.iter().position(|&b| b == b'(')?;
    let close = raw.iter().rposition(|&b| b == b')')?;
    let comm = raw.get(open + 1..close)?.to_vec();
    let rest = std::str::from_utf8(raw.get(close + 2..)?).ok()?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // f[0] is field 3 (state).
    let n = |i: usize| -> Option<u64> { f.get(i - 3)?.parse().ok() };
    let i = |i: usize| -> Option<Pid> { f.get(i - 3)?.parse().ok() };
    Some(Stat {
        comm,
        state: *f.first()?.as_bytes().first()?,
        ppid: i(4)?,
        pgrp: i(5)?,
        session: i(6)?,
        start_code: n(26)?,
        end_code: n(27)?,
        start_stack: n(28)?,
        start_data: n(45)?,
        end_data: n(46)?,
        start_brk: n(47)?,
        arg_start: n(48)?,
        arg_end: n(49)?,
        env_start: n(50)?,
        env_end: n(51)?,
        exit_code: f.get(52 - 3).and_then(|v| v.parse().ok()).unwrap_or(0),
        nice: f.get(19 - 3).and_then(|v| v.parse().ok()).unwrap_or(0),
        flags: n(9)?,
    })
}

/// /proc/PID/status as key -> value lines.
pub fn status(pid: Pid) -> io::Result<Status> {
    Ok(Status(read(pid, "status")?))
}

pub struct Status(pub String);

impl Status {
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k == key).then(|| v.trim())
        })
    }
    pub fn ids(&self, key: &str) -> Vec<u32> {
        self.get(key)
            .unwrap_or("")
            .split_whitespace()
            .filter_map(|x| x.parse().ok())
            .collect()
    }
    pub fn hex(&self, key: &str) -> u64 {
        self.hex_opt(key).unwrap_or(0)
    }
    /// A hexadecimal field (a mask), if present and well-formed.
    pub fn hex_opt(&self, key: &str) -> Option<u64> {
        self.get(key).and_then(|v| u64::from_str_radix(v, 16).ok())
    }
    pub fn octal(&self, key: &str) -> Option<u32> {
        self.get(key).and_then(|v| u32::from_str_radix(v, 8).ok())
    }
    /// A "NNN kB" field, in bytes.
    pub fn bytes(&self, key: &str) -> Option<u64> {
        let v = self.get(key)?.strip_suffix(" kB")?;
        v.trim().parse::<u64>().ok().map(|kb| kb * 1024)
    }
    pub fn num(&self, key: &str) -> Option<i64> {
        self.get(key).and_then(|v| v.parse().ok())
    }
}

/// One line of /proc/PID/maps (plus VmFlags from smaps).
#[derive(Debug, Clone, Default)]
pub struct MapEntry {
    pub start: u64,
    pub end: u64,
    pub read: bool,
    pub write: bool,
    pub exec: bool,
    pub shared: bool,
    pub offset: u64,
    pub dev: u64,
    pub ino: u64,
    pub path: Vec<u8>,
    /// Two-letter VmFlags from smaps.
    pub vmflags: Vec<[u8; 2]>,
    /// Resident plus swapped memory (smaps Rss + Swap), in kB: 0 means no
    /// page of the mapping exists, so it need not be scanned.
    pub present_kb: u64,
}

impl MapEntry {
    pub fn has_flag(&self, f: &[u8; 2]) -> bool {
        self.vmflags.iter().any(|x| x == f)
    }
    pub fn size(&self) -> u64 {
        self.end - self.start
    }
}

/// Parses /proc/PID/maps: ranges, protections and paths only (no VmFlags,
/// no resident sizes), at a fraction of smaps' cost for many mappings.
pub fn map_ranges(pid: Pid) -> io::Result<Vec<MapEntry>> {
    let raw = read_bytes(pid, "maps")?;
    Ok(raw
        .split(|&b| b == b'\n')
        .filter_map(parse_map_line)
        .collect())
}

/// Parses /proc/PID/smaps (maps lines + VmFlags).
pub fn maps(pid: Pid) -> io::Result<Vec<MapEntry>> {
    let raw = read_bytes(pid, "smaps")?;
    let mut out: Vec<MapEntry> = Vec::new();
    for line in raw.split(|&b| b == b'\n') {
        if line.is_empty() {
            continue;
        }
        let kb = |rest: &[u8]| -> u64 {
            std::str::from_utf8(rest)
                .ok()
                .and_then(|v| v.trim().strip_suffix("kB"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0)
        };
        if let Some(rest) = line
            .strip_prefix(b"Rss:")
            .or_else(|| line.strip_prefix(b"Swap:"))
        {
            if let Some(last) = out.last_mut() {
                last.present_kb += kb(rest);
            }
            continue;
        }
        if let Some(rest) = line.strip_prefix(b"VmFlags:") {
            if let Some(last) = out.last_mut() {
                last.vmflags = rest
                    .split(|&b| b == b' ')
                    .filter(|w| w.len() == 2)
                    .map(|w| [w[0], w[1]])
                    .collect();
            }
            continue;
        }
        if let Some(m) = parse_map_line(line) {
            out.push(m);
        }
    }
    Ok(out)
}

fn parse_map_line(line: &[u8]) -> Option<MapEntry> {
    // "start-end perms offset maj:min inode      path"
    let mut it = line.splitn(6, |&b| b == b' ');
    let range = std::str::from_utf8(it.next()?).ok()?;
    let (s, e) = range.split_once('-')?;
    let start = u64::from_str_radix(s, 16).ok()?;
    let end = u64::from_str_radix(e, 16).ok()?;
    let perms = it.next()?;
    if perms.len() != 4 {
        return None;
    }
    let offset = u64::from_str_radix(std::str::from_utf8(it.next()?).ok()?, 16).ok()?;
    let dev = std::str::from_utf8(it.next()?).ok()?;
    let (ma, mi) = dev.split_once(':')?;
    let dev = (u64::from_str_radix(ma, 16).ok()? << 8) | u64::from_str_radix(mi, 16).ok()?;
    let ino = std::str::from_utf8(it.next()?).ok()?.parse().ok()?;
    let path = it.next().unwrap_or(b"");
    let path = &path[path.iter().position(|&b| b != b' ').unwrap_or(path.len())..];
    Some(MapEntry {
        start,
        end,
        read: perms[0] == b'r',
        write: perms[1] == b'w',
        exec: perms[2] == b'x',
        shared: perms[3] == b's',
        offset,
        dev,
        ino,
        path: path.to_vec(),
        vmflags: Vec::new(),
        present_kb: 0,
    })
}

/// pagemap bits.
pub const PM_PRESENT: u64 = 1 << 63;
pub const PM_SWAP: u64 = 1 << 62;
pub const PM_FILE: u64 = 1 << 61;

/// Pagemap entries for [start, end).
pub fn pagemap(pm: &fs::File, start: u64, end: u64) -> io::Result<Vec<u64>> {
    let n = ((end - start) / 4096) as usize;
    let mut buf = vec![0u8; n * 8];
    pm.read_exact_at(&mut buf, start / 4096 * 8)?;
    Ok(buf
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
        .collect())
}

/// Resource limits (soft, hard) from /proc/PID/limits, in resource order
/// (RLIMIT_CPU = 0 ...). Reading them needs no privilege over the process,
/// unlike prlimit(2) on another uid's process.
pub fn limits(pid: Pid) -> io::Result<Vec<(u64, u64)>> {
    let s = read(pid, "limits")?;
    let val = |v: &str| -> Option<u64> {
        match v.trim() {
            "unlimited" => Some(u64::MAX),
            n => n.parse().ok(),
        }
    };
    // Fixed-width rows: a 25-column name, then 20-column soft and hard limits.
    s.lines()
        .skip(1)
        .map(|l| {
            let soft = l.get(26..46).and_then(val);
            let hard = l.get(47..67).and_then(val);
            soft.zip(hard).ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("cannot parse /proc/{pid}/limits line {l:?}"),
                )
            })
        })
        .collect()
}

/// fdinfo fields.
#[derive(Debug, Default)]
pub struct FdInfo {
    pub pos: u64,
    pub flags: u32,
    /// The first `lock:` line (a lock held through this description).
    pub lock: Option<String>,
    /// The whole fdinfo, for the fields of each kind.
    pub text: String,
}

pub fn fdinfo(pid: Pid, fd: i32) -> io::Result<FdInfo> {
    use std::io::Read as _;
    // An fdinfo file is made whole by one call of its show function
    // (`single_open`): a read that returns less than it asked for got all
    // of it. So no size query (`fs::read_to_string` stats the file first)
    // and no read of the end: two syscalls of a dozen per fd.
    let mut f = fs::File::open(path(pid, &format!("fdinfo/{fd}")))?;
    let mut buf = vec![0u8; 4096];
    let mut len = 0;
    loop {
        let n = f.read(&mut buf[len..])?;
        len += n;
        if n == 0 || len < buf.len() {
            break;
        }
        buf.resize(buf.len() * 2, 0);
    }
    buf.truncate(len);
    let text = String::from_utf8(buf).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    Ok(parse_fdinfo(&text))
}

fn parse_fdinfo(s: &str) -> FdInfo {
    let mut fi = FdInfo::default();
    for l in s.lines() {
        if let Some(v) = l.strip_prefix("pos:") {
            fi.pos = v.trim().parse().unwrap_or(0);
        } else if let Some(v) = l.strip_prefix("flags:") {
            fi.flags = u32::from_str_radix(v.trim(), 8).unwrap_or(0);
        } else if let Some(v) = l.strip_prefix("lock:") {
            fi.lock.get_or_insert_with(|| v.trim().to_owned());
        }
    }
    fi.text = s.to_owned();
    fi
}

/// This boot's id (/proc/sys/kernel/random/boot_id, a UUID): monotonic
/// clock readings of two checkpoints compare only when it is the same.
pub fn boot_id() -> io::Result<String> {
    Ok(fs::read_to_string("/proc/sys/kernel/random/boot_id")?
        .trim()
        .to_owned())
}

/// Open fd numbers of a process.
pub fn fds(pid: Pid) -> io::Result<Vec<i32>> {
    let mut v: Vec<i32> = fs::read_dir(path(pid, "fd"))?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    v.sort_unstable();
    Ok(v)
}

/// Whether /proc/PID exists.
pub fn exists(pid: Pid) -> bool {
    path(pid, "stat").exists()
}

/// The parent of `pid` if `pid` is on its way out: a zombie (or dead)
/// task not reaped yet, or one exiting or killed (SIGKILL pending), whose
/// pid is free once its parent reaps it. (A checkpoint returns once its
/// tree is killed, while the tree's memory may still be torn down.)
pub fn dying_parent(pid: Pid) -> Option<Pid> {
    const PF_EXITING: u64 = 0x4;
    let st = stat(pid).ok()?;
    let killed = || {
        status(pid).is_ok_and(|s| {
            let pending = s.hex_opt("ShdPnd").unwrap_or(0) | s.hex_opt("SigPnd").unwrap_or(0);
            pending & 1 << (libc::SIGKILL - 1) != 0
        })
    };
    let dying = matches!(st.state, b'Z' | b'X') || st.flags & PF_EXITING != 0 || killed();
    dying.then_some(st.ppid)
}

/// Waits up to `timeout` in all for the pids in `pids` held by dying,
/// zombie or dead processes (or threads, see `dying_parent`) to be
/// reaped. Live ones are not waited for.
pub fn wait_dying_reaped(pids: &[Pid], timeout: std::time::Duration) {
    let deadline = std::time::Instant::now() + timeout;
    for &pid in pids {
        while dying_parent(pid).is_some() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
    }
}

/// Waits up to `timeout` for every pid in `pids` to be gone (reaped by
/// whoever is its parent); returns those still there.
pub fn wait_gone(pids: &[Pid], timeout: std::time::Duration) -> Vec<Pid> {
    let deadline = std::time::Instant::now() + timeout;
    for &pid in pids {
        while exists(pid) && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
    }
    pids.iter().copied().filter(|&p| exists(p)).collect()
}

/// /proc/PID/mem opened for reading and writing.
pub fn mem(pid: Pid) -> io::Result<fs::File> {
    fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path(pid, "mem"))
}

/// The process's name, escaped for printing (a process chooses its own
/// name, escape sequences included); empty if it cannot be read.
pub fn comm(pid: Pid) -> String {
    read(pid, "comm")
        .map(|s| ckpt_image::escape(s.trim_end_matches('\n').as_bytes()))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An fdinfo longer than the first read (an epoll fd's line per
    /// target) is read whole.
    #[test]
    fn long_fdinfo_is_read_whole() {
        let ep = crate::sys::epoll_create().unwrap();
        let mut fds = Vec::new();
        for i in 0..300 {
            let e = crate::sys::eventfd(libc::EFD_CLOEXEC).unwrap();
            crate::sys::epoll_ctl(ep, libc::EPOLL_CTL_ADD, e, libc::EPOLLIN as u32, i).unwrap();
            fds.push(e);
        }
        let info = fdinfo(std::process::id() as Pid, ep).unwrap();
        assert!(info.text.len() > 8192, "{}", info.text.len());
        assert_eq!(info.text.matches("tfd:").count(), 300);
        for fd in fds.into_iter().chain([ep]) {
            crate::sys::close(fd);
        }
    }

    #[test]
    fn fdinfo_gives_position_flags_and_locks() {
        let held = "pos:\t7\nflags:\t02\nmnt_id:\t25\nino:\t12\nlock:\t1: FLOCK  ADVISORY  WRITE 42 00:1a:12 0 EOF\n";
        let fi = parse_fdinfo(held);
        assert_eq!((fi.pos, fi.flags), (7, 2));
        assert_eq!(
            fi.lock.as_deref(),
            Some("1: FLOCK  ADVISORY  WRITE 42 00:1a:12 0 EOF")
        );
        assert_eq!(parse_fdinfo("pos:\t0\nflags:\t02\n").lock, None);
    }

    #[test]
    fn parses_stat_with_odd_comm() {
        let line = b"42 (a) b) S 1 42 42 0 -1 4194560 0 0 0 0 0 0 0 0 20 0 1 0 1 1 1 18446744073709551615 4096 8192 140000 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0 12288 16384 20480 30000 30010 30010 30020 0\n";
        let s = parse_stat(line).unwrap();
        assert_eq!(s.comm, b"a) b");
        assert_eq!(s.state, b'S');
        assert_eq!(s.ppid, 1);
        assert_eq!(s.start_code, 4096);
        assert_eq!(s.end_code, 8192);
        assert_eq!(s.start_stack, 140000);
        assert_eq!(s.start_brk, 20480);
        assert_eq!(s.env_end, 30020);
    }

    #[test]
    fn parses_maps_line() {
        let m =
            parse_map_line(b"7f00-7f10 r-xp 00001000 08:01 1234          /usr/lib/x y").unwrap();
        assert_eq!(
            (m.start, m.end, m.offset, m.ino),
            (0x7f00, 0x7f10, 0x1000, 1234)
        );
        assert!(m.read && m.exec && !m.write && !m.shared);
        assert_eq!(m.dev, 0x801);
        assert_eq!(m.path, b"/usr/lib/x y");
        let a = parse_map_line(b"1000-2000 rw-s 00000000 00:00 0 ").unwrap();
        assert!(a.shared && a.path.is_empty());
    }

    #[test]
    fn reads_own_limits() {
        let l = limits(std::process::id() as Pid).unwrap();
        assert_eq!(l.len(), 16);
        let mut r = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: r is a valid out-pointer.
        unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) };
        assert_eq!(l[libc::RLIMIT_NOFILE as usize], (r.rlim_cur, r.rlim_max));
    }

    #[test]
    fn reads_own_maps() {
        let m = maps(std::process::id() as Pid).unwrap();
        assert!(m.iter().any(|e| e.path == b"[stack]"));
        assert!(m.iter().all(|e| !e.vmflags.is_empty()));
        let stack = m.iter().find(|e| e.path == b"[stack]").unwrap();
        assert!(stack.present_kb > 0, "the stack has resident pages");
    }
}
