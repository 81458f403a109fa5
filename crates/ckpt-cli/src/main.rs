//! `ckpt`: the command line over the ckpt library.

mod inspect;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use std::io::{IsTerminal, Write};
use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, OnceLock};

#[derive(Parser)]
#[command(
    name = "ckpt",
    version,
    about = "Checkpoint a running Linux process into one image file and restart it later",
    long_about = "ckpt freezes a running process and all its descendants, writes everything \
that makes up their state (threads, registers, memory, files, pipes, signals, timers, \
credentials) into one image, and later restarts them from that image with the same pids, \
so that they carry on as if nothing happened.\n\n\
Typical use (as root):\n  ckpt checkpoint 1234 -o job.img      # save pid 1234, then kill it\n  \
ckpt checkpoint 1234 -o job.img --leave-running   # save it, keep it running\n  \
ckpt restart job.img                 # bring it back; waits for it to finish\n  \
ckpt inspect job.img                 # what is in the image\n  \
ckpt check                           # can this machine do it?"
)]
struct Cli {
    /// Print debug output to stderr (-v: debug, -vv: trace).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Save the process tree rooted at PID into an image, then kill it.
    ///
    /// The process is frozen while its state is read; if anything cannot be
    /// saved, the checkpoint fails, the process continues untouched, and the
    /// image ends with an error record that says why. After a successful
    /// checkpoint the process is KILLED (so its pid is free for `ckpt
    /// restart`) unless --leave-running is given.
    ///
    /// SIGTERM, SIGINT or SIGHUP to ckpt abandon the checkpoint: every
    /// process is given back as it was, and ckpt exits with 128+signal. If
    /// ckpt itself is killed (SIGKILL), the processes heal by themselves
    /// (rarely, an 80 KiB scratch mapping of ckpt's remains in them, named
    /// [anon:ckpt-scratch] where the kernel supports naming).
    Checkpoint {
        /// Process to checkpoint.
        pid: i32,
        /// Image file to write, or `-` for standard output (e.g. to pipe it to another host).
        #[arg(short, long, value_name = "IMAGE|-")]
        output: String,
        /// Keep the process running after the checkpoint (by default it is
        /// killed once the image is complete and synced).
        #[arg(long)]
        leave_running: bool,
        /// Freeze this cgroup while attaching (a cgroup v2 directory or a v1
        /// freezer cgroup holding the whole tree), for trees that fork faster
        /// than ptrace can catch them.
        #[arg(long, value_name = "PATH")]
        freeze_cgroup: Option<PathBuf>,
        /// Do not keep established TCP connections: they close with the
        /// killed tree (the peer sees FIN or RST), and after restart a read
        /// on their sockets returns ECONNRESET, then EOF. By default they
        /// are frozen in TCP repair mode and continue after restart.
        #[arg(long)]
        tcp_close: bool,
        /// Compress page data: lz4 (fast, for local disks) or zstd (smaller,
        /// for slow links). Off by default: then the process writes its own
        /// pages into a file image, the fastest path. Restart and inspect
        /// read either without being told.
        #[arg(long, value_name = "lz4|zstd")]
        compress: Option<Compress>,
        /// Write a structured log (`[err N][pos P][pid X comm] message` lines) to FILE.
        #[arg(long, value_name = "FILE")]
        log: Option<PathBuf>,
    },
    /// Restart a process tree from an image, with its original pids.
    ///
    /// The whole image is read and validated (checksum, CPU features,
    /// registers, pid availability) before any process is created; a restart
    /// that fails part-way kills what it created. From a pipe or socket
    /// (`-`), the metadata is validated (it has its own checksum) before
    /// anything is created, and the pages go into the processes as they
    /// arrive; the tree runs only once the whole image is read and its
    /// checksum is right. (If the image's pids are still in use on this host,
    /// as when piped straight from `ckpt checkpoint`, it is read whole first.) By default ckpt waits for
    /// the restored process and exits with its exit status (128+N if it was
    /// killed by signal N), forwarding SIGINT, SIGTERM, SIGHUP and SIGQUIT to it.
    Restart {
        /// Image file to read, or `-` for standard input.
        #[arg(value_name = "IMAGE|-")]
        image: String,
        /// Return as soon as the restored process runs, printing its pid.
        #[arg(short, long)]
        detach: bool,
        /// Write a structured log to FILE.
        #[arg(long, value_name = "FILE")]
        log: Option<PathBuf>,
    },
    /// Decode an image: every record with its type, offset and size, and a summary.
    Inspect {
        /// Image file to read, or `-` for standard input.
        #[arg(value_name = "IMAGE|-")]
        image: String,
        /// Print JSON instead of a table (for scripts).
        #[arg(long)]
        json: bool,
    },
    /// Report whether this kernel, CPU and privilege level support ckpt.
    ///
    /// Prints one line per feature; exits 0 when every essential one works.
    Check {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// Memory below this is saved or restored too fast to need a progress bar.
const PROGRESS_MIN_BYTES: u64 = 256 << 20;

fn open_log(p: &Option<PathBuf>) -> Result<ckpt::Log> {
    let log = open_log_file(p)?;
    if !std::io::stderr().is_terminal() {
        return Ok(log);
    }
    let mut bar: Option<indicatif::ProgressBar> = None;
    Ok(log.with_progress(Box::new(move |what, done, total| {
        if total < PROGRESS_MIN_BYTES {
            return;
        }
        let b = bar.get_or_insert_with(|| {
            let b = indicatif::ProgressBar::new(total);
            b.set_style(
                indicatif::ProgressStyle::with_template(
                    "{msg} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec}",
                )
                .expect("valid template")
                .progress_chars("=> "),
            );
            b
        });
        b.set_message(what.to_string());
        b.set_length(total);
        b.set_position(done);
        if done >= total {
            b.finish_and_clear();
        }
    })))
}

fn open_log_file(p: &Option<PathBuf>) -> Result<ckpt::Log> {
    Ok(match p {
        None => ckpt::Log::default(),
        Some(p) => ckpt::Log::new(Box::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .with_context(|| format!("cannot open log file {}", p.display()))?,
        )),
    })
}

/// Opens IMAGE for reading (`-` = stdin).
fn open_input(image: &str) -> Result<std::fs::File> {
    if image == "-" {
        let fd: OwnedFd = std::io::stdin().as_fd().try_clone_to_owned()?;
        return Ok(std::fs::File::from(fd));
    }
    std::fs::File::open(image).with_context(|| format!("cannot open image {image}"))
}

/// Page compression algorithms of `checkpoint --compress`.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum Compress {
    Lz4,
    Zstd,
}

fn run(cli: Cli) -> Result<u8> {
    match cli.cmd {
        Cmd::Checkpoint {
            pid,
            output,
            leave_running,
            freeze_cgroup,
            tcp_close,
            compress,
            log,
        } => {
            // First, so that no moment of the checkpoint misses a signal.
            let cancel = install_cancel_handlers()?;
            let mut log = open_log(&log)?;
            if !ckpt::procfs::exists(pid) {
                bail!("no process with pid {pid}; check the pid with `ps -p {pid}`");
            }
            let out = if output == "-" {
                if std::io::stdout().is_terminal() {
                    bail!(
                        "refusing to write an image to a terminal; redirect stdout or use -o FILE"
                    );
                }
                let fd: OwnedFd = std::io::stdout().as_fd().try_clone_to_owned()?;
                std::fs::File::from(fd)
            } else {
                // Read-write: the checkpointed tasks write their pages into it
                // and ckpt checksums them through a read-only mapping.
                std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .open(&output)
                    .with_context(|| format!("cannot create image {output}"))?
            };
            let opts = ckpt::CheckpointOptions {
                leave_running,
                freeze_cgroup,
                cancel: Some(cancel.clone()),
                tcp_close,
                compression: match compress {
                    None => ckpt::mm::Compression::None,
                    Some(Compress::Lz4) => ckpt::mm::Compression::Lz4,
                    Some(Compress::Zstd) => ckpt::mm::Compression::Zstd,
                },
                ..Default::default()
            };
            let w = std::io::BufWriter::with_capacity(
                1 << 20,
                ckpt::checkpoint::Interruptible::new(out, cancel),
            );
            let s = match ckpt::checkpoint(pid, w, &opts, &mut log) {
                Ok(s) => s,
                Err(ckpt::Error::Interrupted) => {
                    let sig = CANCEL_SIGNAL.load(Ordering::SeqCst);
                    eprintln!(
                        "ckpt: {} received: checkpoint of pid {pid} abandoned; the process was left running as it was",
                        signal_name(sig)
                    );
                    return Ok(if sig > 0 { 128 + sig as u8 } else { 1 });
                }
                Err(e) => {
                    return Err(anyhow::Error::new(e).context(format!(
                        "checkpoint of pid {pid} failed; the process was left running"
                    )))
                }
            };
            tracing::info!(
                "checkpointed pid {pid}: {} mappings, {} pages ({} zero pages skipped), {} files",
                s.vmas,
                s.pages,
                s.zero_pages_skipped,
                s.files
            );
            Ok(0)
        }
        Cmd::Restart { image, detach, log } => {
            let mut log = open_log(&log)?;
            let input = open_input(&image)?;
            // The fds of a large image are opened in ckpt first.
            raise_nofile();
            // Signals meant for the restored root wait, blocked, until it
            // runs and the forwarding handlers are in place (the tree forks
            // from us before that, so it never inherits the handlers).
            let forwarded = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT];
            if !detach {
                ckpt::sys::block_signals(&forwarded, true);
            }
            // A restored job we wait for writes to our output where its
            // own reader is gone; a detached one runs on its own.
            let opts = ckpt::RestartOptions {
                inherit_stdio: !detach,
            };
            let root = ckpt::restart(input, &opts, &mut log).context("restart failed")?;
            if detach {
                let mut o = std::io::stdout();
                writeln!(o, "{root}")?;
                o.flush()?;
                return Ok(0);
            }
            FORWARD_TO.store(root, Ordering::Relaxed);
            for s in forwarded {
                ckpt::sys::on_signal(s, forward);
            }
            ckpt::sys::block_signals(&forwarded, false);
            wait_exit(root)
        }
        Cmd::Inspect { image, json } => inspect::run(open_input(&image)?, json),
        Cmd::Check { json } => {
            let f = ckpt::check::run();
            if json {
                println!("{}", serde_json::to_string_pretty(&f)?);
            } else {
                for x in &f {
                    println!(
                        "{:<17} {:<4} {}{}",
                        x.name,
                        if x.ok { "ok" } else { "FAIL" },
                        x.detail,
                        if !x.ok && !x.essential {
                            " (optional)"
                        } else {
                            ""
                        }
                    );
                }
            }
            Ok(if f.iter().all(|x| x.ok || !x.essential) {
                0
            } else {
                1
            })
        }
    }
}

/// Raises the soft RLIMIT_NOFILE to the hard limit.
fn raise_nofile() {
    if let Ok((_, max)) = ckpt::sys::prlimit(0, libc::RLIMIT_NOFILE, None) {
        let _ = ckpt::sys::prlimit(0, libc::RLIMIT_NOFILE, Some((max, max)));
    }
}

/// The restored root that signals to ckpt are forwarded to.
static FORWARD_TO: AtomicI32 = AtomicI32::new(0);

extern "C" fn forward(sig: i32) {
    let pid = FORWARD_TO.load(Ordering::Relaxed);
    if pid > 0 {
        let _ = ckpt::sys::kill(pid, sig);
    }
}

/// Waits for the restored root; its exit status (128+N if killed by N).
fn wait_exit(pid: i32) -> Result<u8> {
    loop {
        let (_, st) = ckpt::sys::wait(pid, 0)
            .with_context(|| format!("cannot wait for the restored process {pid}"))?;
        if libc::WIFEXITED(st) {
            return Ok(libc::WEXITSTATUS(st) as u8);
        }
        if libc::WIFSIGNALED(st) {
            return Ok(128 + libc::WTERMSIG(st) as u8);
        }
    }
}

/// Set by the handlers of the signals that cancel a checkpoint.
static CANCEL: OnceLock<Arc<AtomicBool>> = OnceLock::new();
/// The signal that cancelled it.
static CANCEL_SIGNAL: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_cancel_signal(sig: i32) {
    // Async-signal-safe: atomics only.
    CANCEL_SIGNAL.store(sig, Ordering::SeqCst);
    if let Some(c) = CANCEL.get() {
        c.store(true, Ordering::SeqCst);
    }
}

/// SIGTERM, SIGINT and SIGHUP set the cancel flag (without SA_RESTART, so
/// a blocked write returns EINTR and sees it); the library unwinds and
/// gives every process back.
fn install_cancel_handlers() -> Result<Arc<AtomicBool>> {
    let flag = CANCEL
        .get_or_init(|| Arc::new(AtomicBool::new(false)))
        .clone();
    for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
        ckpt::sys::on_signal_interrupting(sig, on_cancel_signal)
            .with_context(|| format!("cannot install a handler for signal {sig}"))?;
    }
    Ok(flag)
}

fn signal_name(sig: i32) -> String {
    match sig {
        libc::SIGTERM => "SIGTERM".into(),
        libc::SIGINT => "SIGINT".into(),
        libc::SIGHUP => "SIGHUP".into(),
        n => format!("signal {n}"),
    }
}

/// The error and its causes on one line, without repeating a cause that
/// a message already quotes (library errors include their io error).
fn one_line(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let msg = cause.to_string();
        if out.ends_with(&msg) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&msg);
    }
    out
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The library reads no environment: its test hooks come from here.
    ckpt::test_hooks::install(ckpt::test_hooks::TestHooks::from_env());
    let level = match cli.verbose {
        0 => "warn",
        1 => "debug",
        _ => "trace",
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CKPT_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level)),
        )
        .init();
    // A closed stdout (e.g. `| head`) is an error to report, not a crash.
    // SAFETY: SIG_IGN for SIGPIPE is always valid.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
    let _ = OwnedFd::from_raw_fd; // keep the import meaningful for from_raw_fd users
    match run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("ckpt: {}", one_line(&e));
            ExitCode::from(1)
        }
    }
}
