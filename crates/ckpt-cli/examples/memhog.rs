//! Benchmark workload: fills N MiB of heap with pseudo-random data (so no
//! page is skipped as zero), creates READY_FILE, then sleeps.
//! Usage: memhog MIB READY_FILE

fn main() {
    let mut args = std::env::args().skip(1);
    let mib: usize = args
        .next()
        .and_then(|a| a.parse().ok())
        .expect("usage: memhog MIB READY_FILE");
    let ready = args.next().expect("usage: memhog MIB READY_FILE");
    let mut v = vec![0u64; mib << 17];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for w in v.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *w = x;
    }
    std::fs::write(&ready, b"ready\n").expect("write ready file");
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
        std::hint::black_box(&v);
    }
}
