//! Demo workload: appends an increasing counter to a file ten times a second.
//! `scripts/demo.sh` checkpoints and restarts it.

use std::io::Write;

fn main() {
    let path = std::env::args().nth(1).expect("usage: counter FILE");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .expect("open counter file");
    let mut i: u64 = 0;
    loop {
        i += 1;
        writeln!(f, "{i}").expect("write counter");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}
