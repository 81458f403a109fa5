//! Loud, countable skips. `cargo test` hides what passing tests print, so a
//! skip is also appended to `$CKPT_TEST_SKIPS` (scripts/test.sh sums them
//! up), and with `CKPT_TEST_NO_SKIP=1` (set by scripts/test.sh when running
//! as root, where every test can run) a skip fails the test instead.

use std::io::Write;

/// Reports that the calling test is skipped, for the reason `msg`
/// ("test_name: why"); the caller returns right after.
pub fn skip(msg: &str) {
    eprintln!("SKIP: {msg}");
    if let Some(path) = std::env::var_os("CKPT_TEST_SKIPS") {
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let _ = writeln!(f, "SKIP: {msg}");
        }
    }
    if std::env::var_os("CKPT_TEST_NO_SKIP").is_some_and(|v| v == "1") {
        panic!("test skipped although this machine should run it (CKPT_TEST_NO_SKIP=1): {msg}");
    }
}
