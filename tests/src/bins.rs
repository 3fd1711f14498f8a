//! The one place the binaries under test are found (the rule is in the crate documentation).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// `$SANDBOX_TEST_BIN_DIR`, else `target/<profile>/` of the running test executable.
pub fn bin_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        if let Some(dir) = std::env::var_os("SANDBOX_TEST_BIN_DIR") {
            return PathBuf::from(dir);
        }
        let exe = std::env::current_exe().expect("the path of the running test executable");
        let dir = exe.parent().expect("the test executable's directory");
        // Cargo puts the test at target/<profile>/deps/NAME-HASH and the binaries one up.
        if dir.file_name() == Some("deps".as_ref()) {
            dir.parent().unwrap_or(dir).to_path_buf()
        } else {
            dir.to_path_buf()
        }
    })
}

/// The binary `name` (`sandbox`, `sandbox-vmm`, `sandbox-agent`,
/// `containerd-shim-sandbox-v2`) in [`bin_dir`]; panics, saying how to build it, if absent.
pub fn bin(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    if !p.is_file() {
        let from = if std::env::var_os("SANDBOX_TEST_BIN_DIR").is_some() {
            " (from $SANDBOX_TEST_BIN_DIR)"
        } else {
            ""
        };
        panic!(
            "{name} is not at {}{from}: `cargo build --workspace` builds it (scripts/test.sh \
             builds it and the static guest agent before it tests)",
            p.display()
        );
    }
    p
}

/// The statically linked guest agent: `$SANDBOX_GUEST_AGENT`, else
/// `<target>/x86_64-unknown-linux-gnu/<profile>/sandbox-agent` for the profile directory
/// [`bin_dir`]; panics, saying how to build it, if absent.
pub fn guest_agent() -> PathBuf {
    let (p, from) = match std::env::var_os("SANDBOX_GUEST_AGENT") {
        Some(p) => (PathBuf::from(p), " (from $SANDBOX_GUEST_AGENT)"),
        None => {
            let dir = bin_dir();
            let target = dir.parent().unwrap_or(dir);
            let profile = dir.file_name().unwrap_or("debug".as_ref());
            let p = target
                .join("x86_64-unknown-linux-gnu")
                .join(profile)
                .join("sandbox-agent");
            (p, "")
        }
    };
    if !p.is_file() {
        panic!(
            "the static guest agent is not at {}{from}: `RUSTFLAGS=\"-C \
             target-feature=+crt-static\" cargo build -p agent --target \
             x86_64-unknown-linux-gnu` builds it (scripts/test.sh builds it and the workspace's \
             binaries before it tests)",
            p.display()
        );
    }
    p
}

/// Points `cmd` (a `sandbox`, or a daemon whose children run the runtime) at the binaries
/// found here, so neither it nor its children pick up other copies next to themselves or on
/// PATH.
pub fn use_binaries(cmd: &mut Command) -> &mut Command {
    cmd.env("SANDBOX_VMM", bin("sandbox-vmm"))
        .env("SANDBOX_AGENT", bin("sandbox-agent"))
        .env("SANDBOX_GUEST_AGENT", guest_agent())
}

/// A `sandbox` command using the binaries under test, with the caller's runtime root and
/// isolation (see [`crate::Env::cmd`] for a private root).
pub fn sandbox() -> Command {
    let mut c = Command::new(bin("sandbox"));
    use_binaries(&mut c);
    c
}
