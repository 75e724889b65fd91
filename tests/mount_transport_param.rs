//! With the kernel's `enable_uring` switch off, `--transport uring` refuses
//! to mount with a message naming the switch, and `auto` falls back to
//! `/dev/fuse`. The switch is machine-wide, so this runs in a test binary
//! of its own (cargo runs test binaries one at a time) and puts the old
//! value back however it ends.

mod common;

use std::process::Command;

const PARAM: &str = "/sys/module/fuse/parameters/enable_uring";

/// Sets the switch; the old value comes back on drop.
struct Switch(String);

impl Switch {
    fn set(v: &str) -> Option<Switch> {
        let old = std::fs::read_to_string(PARAM).ok()?;
        std::fs::write(PARAM, v).ok()?;
        Some(Switch(old.trim().to_string()))
    }
}

impl Drop for Switch {
    fn drop(&mut self) {
        let _ = std::fs::write(PARAM, &self.0);
    }
}

#[test]
fn uring_with_the_switch_off_is_a_clear_error_and_auto_falls_back() {
    if !common::fuse_or_skip() {
        return;
    }
    let Some(_restore) = Switch::set("N") else {
        common::skipped(&format!(
            "{PARAM} cannot be written here (not root, or no FUSE over io_uring)"
        ));
        return;
    };
    let store = tempfile::tempdir().expect("store");
    let mnt = tempfile::tempdir().expect("mountpoint");
    let out = Command::new(common::bin())
        .args(["mount", "-f", "--transport", "uring"])
        .arg(mnt.path())
        .arg(store.path())
        .output()
        .expect("run zippyfs");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains(PARAM), "the message names the switch: {err}");
    assert!(err.contains("echo Y"), "and says how to turn it on: {err}");
    assert!(!common::is_mounted(mnt.path()), "nothing is left mounted");

    let m = common::Mounted::start(store.path(), &["--transport", "auto"]);
    let d = common::daemon_json(m.path());
    assert_eq!(d["transport"], "classic", "{d}");
    std::fs::write(m.path().join("f"), b"x").expect("write");
    assert!(m.unmount().success());
}
