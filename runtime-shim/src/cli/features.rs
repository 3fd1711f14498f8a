//! `sandbox features`: the OCI runtime features document (runtime-spec `features.md`), which
//! callers such as containerd read to learn what a runtime accepts.

use crate::error::Result;

pub fn run() -> Result<()> {
    let doc = serde_json::json!({
        "ociVersionMin": "1.0.0",
        "ociVersionMax": crate::state::OCI_VERSION,
        // Every hook point of the runtime spec: prestart, createRuntime and poststart run in
        // the runtime's namespaces, createContainer and startContainer in the container's,
        // poststop at `delete` (docs/sandbox-cli.md).
        "hooks": [
            "prestart", "createRuntime", "createContainer", "startContainer", "poststart",
            "poststop"
        ],
        // What agent::engine::parse_mount_options knows, plus the filesystem data options
        // the engine's own mounts use (anything else goes to the filesystem as data).
        "mountOptions": [
            "ro", "rw", "nosuid", "suid", "nodev", "dev", "noexec", "exec", "sync", "async",
            "dirsync", "remount", "mand", "nomand", "defaults", "bind", "rbind", "private",
            "rprivate", "shared", "rshared", "slave", "rslave", "unbindable", "runbindable",
            "relatime", "norelatime", "strictatime", "nostrictatime", "noatime", "atime",
            "nodiratime", "diratime", "lazytime", "nolazytime", "iversion", "noiversion",
            "silent", "loud", "tmpcopyup", "nosymfollow", "mode", "size", "uid", "gid",
            "newinstance", "ptmxmode"
        ],
        "linux": {
            "namespaces": ["cgroup", "ipc", "mount", "network", "pid", "uts", "user"],
            "cgroup": {"v1": true, "v2": true},
            "seccomp": {"enabled": true, "actions": [
                "SCMP_ACT_ALLOW", "SCMP_ACT_ERRNO", "SCMP_ACT_KILL", "SCMP_ACT_KILL_PROCESS",
                "SCMP_ACT_KILL_THREAD", "SCMP_ACT_TRAP", "SCMP_ACT_TRACE", "SCMP_ACT_LOG"
            ]},
            "apparmor": {"enabled": false},
            "selinux": {"enabled": false}
        }
    });
    println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
    Ok(())
}
