//! Fault-injection hooks for ckpt's own end-to-end tests. The library reads
//! no environment variable: the `ckpt` command line fills `TestHooks` from
//! its `CKPT_TEST_*` variables (`from_env`) and installs them once, before
//! any work. Not a stable interface.

use std::sync::OnceLock;

/// What each hook does is described where the CLI reads it (`from_env`).
#[derive(Debug, Clone, Default)]
pub struct TestHooks {
    /// `CKPT_TEST_SIGNAL_BEFORE_RELEASE=SIG`: SIG is sent to the root just
    /// before a leave-running checkpoint or a restart lets the tree go, so
    /// a test can check that a signal pending at that moment interrupts
    /// the syscall the checkpoint interrupted, as it would have.
    pub signal_before_release: Option<i32>,
    /// `CKPT_TEST_FAIL_AFTER_SPAWN`: a restart fails once its processes
    /// exist (they must all be gone afterwards).
    pub fail_after_spawn: bool,
    /// `CKPT_TEST_FAIL_REBUILD=PID`: a restart fails in the rebuild of
    /// process PID, its memory just replaced (every process must be gone
    /// afterwards).
    pub fail_rebuild: Option<i32>,
    /// `CKPT_TEST_KILL_AT_INJECTION=N[:before|:entry|:exit]` (see `remote`).
    pub kill_at_injection: Option<String>,
    /// `CKPT_TEST_OTHER_IN_SLOT`: other threads inject from the second slot.
    pub other_in_slot: bool,
    /// `CKPT_TEST_NO_HEAL_GADGETS`: use the vDSO's plain syscall.
    pub no_heal_gadgets: bool,
    /// `CKPT_TEST_KILL_AFTER_REPAIR`: ckpt kills itself (SIGKILL) right
    /// after it put a TCP connection in repair mode.
    pub kill_after_repair: bool,
    /// `CKPT_TEST_NO_PAGEMAP_SCAN`: pages are found through pagemap, as on
    /// kernels before 6.7.
    pub no_pagemap_scan: bool,
}

impl TestHooks {
    /// The hooks named by the `CKPT_TEST_*` environment variables.
    pub fn from_env() -> TestHooks {
        let var = |n: &str| std::env::var(n).ok();
        TestHooks {
            signal_before_release: var("CKPT_TEST_SIGNAL_BEFORE_RELEASE")
                .and_then(|v| v.parse().ok()),
            fail_after_spawn: var("CKPT_TEST_FAIL_AFTER_SPAWN").is_some(),
            fail_rebuild: var("CKPT_TEST_FAIL_REBUILD").and_then(|v| v.parse().ok()),
            kill_at_injection: var("CKPT_TEST_KILL_AT_INJECTION"),
            other_in_slot: var("CKPT_TEST_OTHER_IN_SLOT").is_some(),
            no_heal_gadgets: var("CKPT_TEST_NO_HEAL_GADGETS").is_some(),
            kill_after_repair: var("CKPT_TEST_KILL_AFTER_REPAIR").is_some(),
            no_pagemap_scan: var("CKPT_TEST_NO_PAGEMAP_SCAN").is_some(),
        }
    }
}

static HOOKS: OnceLock<TestHooks> = OnceLock::new();

/// Installs the hooks for the rest of the process (first call wins).
pub fn install(h: TestHooks) {
    let _ = HOOKS.set(h);
}

/// The installed hooks (none by default).
pub(crate) fn get() -> &'static TestHooks {
    static NONE: TestHooks = TestHooks {
        signal_before_release: None,
        fail_after_spawn: false,
        fail_rebuild: None,
        kill_at_injection: None,
        other_in_slot: false,
        no_heal_gadgets: false,
        kill_after_repair: false,
        no_pagemap_scan: false,
    };
    HOOKS.get().unwrap_or(&NONE)
}
