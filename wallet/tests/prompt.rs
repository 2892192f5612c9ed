//! The passphrase prompt on a real terminal (a pseudo-terminal this test
//! opens): asked twice on keygen, never echoed, and a mismatch refused.
#![cfg(target_os = "linux")]

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Runs the wallet with a pseudo-terminal as its controlling terminal and
/// stdin, typing `lines` one at a time after each prompt; returns the exit
/// code and everything the terminal showed.
fn on_terminal(args: &[&str], lines: &[&str]) -> (i32, String) {
    let (mut controller, device) = open_pty();
    let device_fd = device.as_raw_fd();
    let mut command = Command::new(env!("CARGO_BIN_EXE_cairn-wallet"));
    command
        .args(args)
        .env_remove("CAIRN_PASSPHRASE")
        .stdin(Stdio::from(device.try_clone().unwrap()))
        .stdout(Stdio::from(device.try_clone().unwrap()))
        .stderr(Stdio::from(device.try_clone().unwrap()));
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        command.pre_exec(move || {
            if libc::setsid() < 0 || libc::ioctl(device_fd, libc::TIOCSCTTY, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = command.spawn().expect("start cairn-wallet");
    drop(device);
    let mut shown = Vec::new();
    let mut typed = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut buffer = [0u8; 4096];
        let mut poll = libc::pollfd {
            fd: controller.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let ready = unsafe { libc::poll(&mut poll, 1, 100) };
        if ready > 0 {
            match controller.read(&mut buffer) {
                Ok(n) if n > 0 => shown.extend_from_slice(&buffer[..n]),
                _ => break, // EIO: the wallet closed the terminal
            }
        }
        let text = String::from_utf8_lossy(&shown);
        // Type only once the prompt is shown and echo is off, as a person
        // would (typed earlier, the terminal itself would echo it).
        if typed < lines.len() && text.matches(": ").count() > typed && !echoing(&controller) {
            controller
                .write_all(format!("{}\n", lines[typed]).as_bytes())
                .unwrap();
            typed += 1;
        }
        if let Some(status) = child.try_wait().unwrap() {
            if ready <= 0 {
                return (status.code().unwrap_or(-1), text.into_owned());
            }
        }
        assert!(Instant::now() < deadline, "the wallet hung: {text}");
    }
    let status = child.wait().unwrap();
    (
        status.code().unwrap_or(-1),
        String::from_utf8_lossy(&shown).into_owned(),
    )
}

/// Whether the terminal echoes input now (asked through the controller
/// side, which reports the terminal's settings on Linux).
fn echoing(controller: &File) -> bool {
    // SAFETY: a zeroed termios is a valid out-parameter.
    let mut termios: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: a valid descriptor and a valid termios pointer.
    let result = unsafe { libc::tcgetattr(controller.as_raw_fd(), &mut termios) };
    assert_eq!(result, 0, "tcgetattr: {}", std::io::Error::last_os_error());
    termios.c_lflag & libc::ECHO != 0
}

fn open_pty() -> (File, OwnedFd) {
    let (mut controller, mut device) = (0, 0);
    // SAFETY: two out-pointers to c_int, null name/termios/winsize.
    let result = unsafe {
        libc::openpty(
            &mut controller,
            &mut device,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(result, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: openpty returned two fresh descriptors we now own.
    unsafe { (File::from_raw_fd(controller), OwnedFd::from_raw_fd(device)) }
}

#[test]
fn the_prompt_asks_twice_and_never_echoes() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("tty.key");
    let key_arg = key.to_str().unwrap();
    let secret = "s3cret-typed-on-a-terminal";

    let (code, shown) = on_terminal(&["keygen", "--out", key_arg], &[secret, "different"]);
    assert_eq!(code, 1, "{shown}");
    assert!(shown.contains("the passphrases do not match"), "{shown}");
    assert!(!key.exists());

    let (code, shown) = on_terminal(&["keygen", "--out", key_arg], &[secret, secret]);
    assert_eq!(code, 0, "{shown}");
    assert!(shown.contains("New passphrase for"), "{shown}");
    assert!(shown.contains("Repeat the passphrase"), "{shown}");
    assert!(
        !shown.contains(secret),
        "the passphrase was echoed: {shown}"
    );
    let address = shown.lines().last().unwrap().trim().to_string();
    assert_eq!(address.len(), 64, "{shown}");

    let sign = |passphrase: &str| {
        on_terminal(
            &[
                "sign-transfer",
                "--key",
                key_arg,
                "--to",
                &address,
                "--amount",
                "1",
                "--nonce",
                "0",
                "--chain-id",
                "c",
            ],
            &[passphrase],
        )
    };
    let (code, shown) = sign(secret);
    assert_eq!(code, 0, "{shown}");
    assert!(shown.contains("Passphrase for"), "{shown}");
    assert!(
        !shown.contains(secret),
        "the passphrase was echoed: {shown}"
    );
    assert!(shown.contains("\"signature\""), "{shown}");
    let (code, shown) = sign("wrong");
    assert_eq!(code, 1, "{shown}");
    assert!(
        shown.contains("wrong passphrase or corrupted key file"),
        "{shown}"
    );
}
