//! The live view, through a pseudo-terminal: the overall bar is there before any node ends, its
//! clock ticks while nothing ends, and after Ctrl-C nothing of the view is left on the screen.

use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::Project;

const ROWS: u16 = 30;
const COLS: u16 = 120;

/// A pseudo-terminal: (controller, terminal) of `ROWS` × `COLS`.
fn openpty() -> (OwnedFd, OwnedFd) {
    let (mut controller, mut terminal) = (-1, -1);
    let size = libc::winsize {
        ws_row: ROWS,
        ws_col: COLS,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: openpty writes two descriptors it opened, which we then own.
    let rc = unsafe {
        libc::openpty(
            &mut controller,
            &mut terminal,
            std::ptr::null_mut(),
            std::ptr::null(),
            &size,
        )
    };
    assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: both are open descriptors no one else owns.
    unsafe {
        (
            OwnedFd::from_raw_fd(controller),
            OwnedFd::from_raw_fd(terminal),
        )
    }
}

/// A running kiln on a terminal, and everything it has written to it so far.
struct OnTerminal {
    child: std::process::Child,
    controller: std::fs::File,
    written: Arc<Mutex<Vec<u8>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl OnTerminal {
    fn spawn(p: &Project, args: &[&str]) -> OnTerminal {
        let (controller, terminal) = openpty();
        let mut cmd = p.command(args);
        let io = || Stdio::from(terminal.try_clone().unwrap());
        cmd.stdin(io()).stdout(io()).stderr(io());
        // SAFETY: only async-signal-safe calls between fork and exec: the child leads a new
        // session whose controlling terminal is the pseudo-terminal, so ^C reaches it.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().expect("spawn kiln on a terminal");
        drop(cmd);
        drop(terminal);
        let controller = std::fs::File::from(controller);
        let written = Arc::new(Mutex::new(Vec::new()));
        let reader = {
            let mut from = controller.try_clone().unwrap();
            let written = written.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                // EIO once the last holder of the terminal is gone: the end.
                while let Ok(n) = from.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    written.lock().unwrap().extend_from_slice(&buf[..n]);
                }
            })
        };
        OnTerminal {
            child,
            controller,
            written,
            reader: Some(reader),
        }
    }

    /// The screen as a terminal shows what was written so far.
    fn screen(&self) -> String {
        let size = |n| std::num::NonZeroU16::new(n).expect("a size");
        let mut parser = vt100::Parser::new(size(ROWS), size(COLS), 0);
        parser.process(&self.written.lock().unwrap());
        // Row by row: a line as wide as the terminal is no line break short of the next one.
        let rows: Vec<String> = parser.screen().rows(0, COLS).collect();
        rows.join("\n")
    }

    /// Waits (at most a minute) until the screen passes `check`; returns it.
    #[track_caller]
    fn wait_for(&self, what: &str, check: impl Fn(&str) -> bool) -> String {
        let start = Instant::now();
        loop {
            let screen = self.screen();
            if check(&screen) {
                return screen;
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "waited a minute for {what}; the screen:\n{screen}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits for the exit code, and for the terminal's last bytes.
    fn wait(mut self) -> (i32, String) {
        let start = Instant::now();
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if start.elapsed() > Duration::from_secs(60) {
                let _ = self.child.kill();
                panic!("kiln did not end after ^C; the screen:\n{}", self.screen());
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        if let Some(r) = self.reader.take() {
            r.join().unwrap();
        }
        (status.code().unwrap_or(-1), self.screen())
    }
}

/// The `HH:MM:SS` clock at the start of the overall bar's line.
fn clock(screen: &str) -> Option<String> {
    let line = screen.lines().find(|l| l.contains(" nodes"))?;
    Some(line.split_whitespace().next()?.to_string())
}

#[test]
fn the_live_view_ticks_and_leaves_a_clean_screen_after_ctrl_c() {
    let mut p = Project::new()
        .with_file(
            "modules/cmd.kdl",
            r#"
module "cmd" {
    step "build" builder="command" {
        argv "sh" "-c" "echo working on {name}; sleep 60"
    }
}
"#,
        )
        .with_file(
            "images.kdl",
            r#"
import "modules/cmd.kdl"
kubernetes "1.31" { version "1.31.4"; }
matrix "m" { kubernetes "1.31"; provider "p"; os "one" "two"; }
provider "p" module="cmd"
"#,
        );
    p.unset_env("NO_COLOR");
    p.set_env("TERM", "xterm-256color");
    let mut run = OnTerminal::spawn(&p, &["build", "-j", "2"]);

    // The bar is there before any node ends, with both running nodes above it.
    let screen = run.wait_for("the bar and both running nodes", |s| {
        s.contains("0/2 nodes")
            && s.contains("p/one/1.31/build (build)")
            && s.contains("p/two/1.31/build (build)")
            && s.contains("working on p-two-k8s-1.31")
    });
    // Its clock moves on while nothing ends.
    let first = clock(&screen).expect("a clock");
    run.wait_for("the clock to tick", |s| {
        s.contains("0/2 nodes") && clock(s).is_some_and(|c| c != first)
    });

    run.controller.write_all(b"\x03").unwrap();
    let (code, screen) = run.wait();
    assert_eq!(code, 130, "{screen}");
    assert!(!screen.contains(" nodes"), "the bar is left:\n{screen}");
    assert!(
        !screen.contains('│'),
        "a running node's line is left:\n{screen}"
    );
    assert!(
        screen.contains("0 built, 0 cached, 2 cancelled, interrupted"),
        "{screen}"
    );
}
