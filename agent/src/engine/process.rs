//! The container process's own attributes, applied in the forked child right before execve:
//! rlimits, working directory, umask, user and groups, capabilities, no_new_privs, seccomp,
//! the terminal and the environment.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use oci_spec::runtime::{PosixRlimitType, Process};

use super::capabilities;
use super::fds::dup_to;
use super::seccomp::Filter;

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

pub(crate) fn rlimit_resource(t: PosixRlimitType) -> Option<libc::__rlimit_resource_t> {
    use PosixRlimitType::*;
    Some(match t {
        RlimitCpu => libc::RLIMIT_CPU,
        RlimitFsize => libc::RLIMIT_FSIZE,
        RlimitData => libc::RLIMIT_DATA,
        RlimitStack => libc::RLIMIT_STACK,
        RlimitCore => libc::RLIMIT_CORE,
        RlimitRss => libc::RLIMIT_RSS,
        RlimitNproc => libc::RLIMIT_NPROC,
        RlimitNofile => libc::RLIMIT_NOFILE,
        RlimitMemlock => libc::RLIMIT_MEMLOCK,
        RlimitAs => libc::RLIMIT_AS,
        RlimitLocks => libc::RLIMIT_LOCKS,
        RlimitSigpending => libc::RLIMIT_SIGPENDING,
        RlimitMsgqueue => libc::RLIMIT_MSGQUEUE,
        RlimitNice => libc::RLIMIT_NICE,
        RlimitRtprio => libc::RLIMIT_RTPRIO,
        RlimitRttime => libc::RLIMIT_RTTIME,
        #[allow(unreachable_patterns)]
        _ => return None,
    })
}

/// Sets the rlimits while we still have CAP_SYS_RESOURCE to raise hard limits.
pub(crate) fn set_rlimits(p: &Process) -> Result<(), String> {
    for r in p.rlimits().iter().flatten() {
        let res = rlimit_resource(r.typ()).ok_or_else(|| format!("unknown rlimit {}", r.typ()))?;
        let lim = libc::rlimit {
            rlim_cur: r.soft(),
            rlim_max: r.hard(),
        };
        // SAFETY: setrlimit reads the struct we pass.
        if unsafe { libc::setrlimit(res, &lim) } != 0 {
            return Err(format!(
                "setrlimit({}, {}, {}): {}",
                r.typ(),
                r.soft(),
                r.hard(),
                Errno::last()
            ));
        }
    }
    Ok(())
}

/// Writes oom_score_adj before capabilities are dropped (lowering it needs
/// CAP_SYS_RESOURCE).
pub(crate) fn set_oom_score_adj(p: &Process) -> Result<(), String> {
    if let Some(v) = p.oom_score_adj() {
        std::fs::write("/proc/self/oom_score_adj", v.to_string())
            .map_err(|e| format!("write /proc/self/oom_score_adj {v}: {e}"))?;
    }
    Ok(())
}

/// The environment for execve. Without HOME in the spec it comes from the container's
/// /etc/passwd for the process's uid, else `/` (as runc does). Runs inside the new root.
pub(crate) fn environment(p: &Process) -> Result<Vec<CString>, String> {
    let mut env: Vec<String> = p.env().clone().unwrap_or_default();
    if !env.iter().any(|e| e.starts_with("HOME=")) {
        let home = std::fs::read_to_string("/etc/passwd")
            .ok()
            .and_then(|t| home_of(&t, p.user().uid()))
            .unwrap_or_else(|| "/".to_string());
        env.push(format!("HOME={home}"));
    }
    env.into_iter()
        .map(|e| CString::new(e).map_err(|_| "process.env: an entry contains NUL".to_string()))
        .collect()
}

/// The home directory of `uid` in passwd(5) text.
fn home_of(passwd: &str, uid: u32) -> Option<String> {
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() >= 7 && f[2].parse() == Ok(uid) && !f[5].is_empty()).then(|| f[5].to_string())
    })
}

fn is_executable(p: &Path) -> bool {
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Resolves args[0] the way execvp would, using the container's PATH.
pub(crate) fn find_executable(p: &Process) -> Result<CString, String> {
    let args = p.args().as_deref().unwrap_or(&[]);
    let name = args.first().ok_or("process.args: must not be empty")?;
    let found: PathBuf = if name.contains('/') {
        let path = PathBuf::from(name);
        if !is_executable(&path) {
            return Err(format!("process.args[0]: {name}: no such executable file"));
        }
        path
    } else {
        let path_var = p
            .env()
            .iter()
            .flatten()
            .find_map(|e| e.strip_prefix("PATH="))
            .unwrap_or(DEFAULT_PATH);
        path_var
            .split(':')
            .map(|dir| Path::new(if dir.is_empty() { "." } else { dir }).join(name))
            .find(|c| is_executable(c))
            .ok_or_else(|| {
                format!("process.args[0]: executable file `{name}` not found in $PATH")
            })?
    };
    CString::new(found.as_os_str().as_bytes()).map_err(|_| "process.args[0]: contains NUL".into())
}

pub(crate) fn argv(p: &Process) -> Result<Vec<CString>, String> {
    p.args()
        .iter()
        .flatten()
        .map(|a| CString::new(a.as_str()).map_err(|_| "process.args: contains NUL".to_string()))
        .collect()
}

fn prctl(op: libc::c_int, arg: libc::c_ulong, what: &str) -> Result<(), String> {
    // SAFETY: prctl with integer arguments.
    if unsafe { libc::prctl(op, arg, 0, 0, 0) } != 0 {
        return Err(format!("{what}: {}", Errno::last()));
    }
    Ok(())
}

/// Opens a terminal from the container's /dev/ptmx, makes it the controlling terminal and
/// fds 0-2, and returns the master for the engine.
pub(crate) fn open_terminal(p: &Process, bind_console: bool) -> Result<OwnedFd, String> {
    // SAFETY: open with a static path.
    let master = unsafe {
        libc::open(
            c"/dev/ptmx".as_ptr(),
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        )
    };
    if master < 0 {
        return Err(format!("open /dev/ptmx: {}", Errno::last()));
    }
    // SAFETY: fresh descriptor.
    let master = unsafe { OwnedFd::from_raw_fd(master) };
    let m = master.as_raw_fd();
    let mut n: libc::c_uint = 0;
    let mut unlock: libc::c_int = 0;
    // SAFETY: ioctls on the ptmx descriptor with pointers to locals.
    unsafe {
        if libc::ioctl(m, libc::TIOCSPTLCK, &mut unlock) != 0 {
            return Err(format!("unlock the pty: {}", Errno::last()));
        }
        if libc::ioctl(m, libc::TIOCGPTN, &mut n) != 0 {
            return Err(format!("pty number: {}", Errno::last()));
        }
    }
    let slave_path = format!("/dev/pts/{n}");
    let c = CString::new(slave_path.clone()).expect("no NUL");
    // SAFETY: open with a valid path.
    let slave = unsafe { libc::open(c.as_ptr(), libc::O_RDWR | libc::O_NOCTTY) };
    if slave < 0 {
        return Err(format!("open {slave_path}: {}", Errno::last()));
    }
    if let Some(size) = p.console_size() {
        let ws = libc::winsize {
            ws_row: size.height() as u16,
            ws_col: size.width() as u16,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: ioctl with a pointer to a local winsize.
        unsafe { libc::ioctl(m, libc::TIOCSWINSZ, &ws) };
    }
    // SAFETY: makes the slave our controlling terminal; we are a session leader.
    if unsafe { libc::ioctl(slave, libc::TIOCSCTTY, 0) } != 0 {
        return Err(format!(
            "make {slave_path} the controlling terminal: {}",
            Errno::last()
        ));
    }
    for fd in 0..3 {
        dup_to(slave, fd).map_err(|e| format!("dup {slave_path} to fd {fd}: {e}"))?;
    }
    if slave > 2 {
        // SAFETY: our own descriptor, no longer needed.
        unsafe { libc::close(slave) };
    }
    // /dev/console names the init's terminal, as runc does.
    if bind_console
        && (Path::new("/dev/console").exists() || std::fs::File::create("/dev/console").is_ok())
    {
        let _ = nix::mount::mount(
            Some(slave_path.as_str()),
            "/dev/console",
            None::<&str>,
            nix::mount::MsFlags::MS_BIND,
            None::<&str>,
        );
    }
    Ok(master)
}

/// Everything after `Go`: ends in execve, or returns why it could not.
pub(crate) fn exec(p: &Process, seccomp: Option<&Filter>) -> String {
    match prepare_exec(p, seccomp) {
        Ok((path, argv, envp)) => match nix::unistd::execve(&path, &argv, &envp) {
            Err(e) => format!("execve {}: {e}", path.to_string_lossy()),
            Ok(never) => match never {},
        },
        Err(e) => e,
    }
}

fn prepare_exec(
    p: &Process,
    seccomp: Option<&Filter>,
) -> Result<(CString, Vec<CString>, Vec<CString>), String> {
    let cwd = p.cwd();
    nix::unistd::chdir(cwd).map_err(|e| format!("process.cwd: chdir {}: {e}", cwd.display()))?;
    let user = p.user();
    // SAFETY: umask has no memory effects.
    unsafe { libc::umask(user.umask().unwrap_or(0o022) as libc::mode_t) };
    let path = find_executable(p)?;
    let argv = argv(p)?;
    let envp = environment(p)?;
    let nnp = p.no_new_privileges().unwrap_or(false);
    let caps = p.capabilities().as_ref();

    if let Some(c) = caps {
        capabilities::apply_bounding(c)?;
    }
    prctl(libc::PR_SET_KEEPCAPS, 1, "prctl(PR_SET_KEEPCAPS)")?;
    // Without no_new_privs only CAP_SYS_ADMIN may install a filter: do it while we have it.
    if let (Some(f), false) = (seccomp, nnp) {
        f.install()?;
    }
    let gids: Vec<libc::gid_t> = user.additional_gids().clone().unwrap_or_default();
    // SAFETY: setgroups reads `gids.len()` entries.
    if unsafe { libc::setgroups(gids.len(), gids.as_ptr()) } != 0 {
        return Err(format!(
            "process.user.additionalGids: setgroups {gids:?}: {}",
            Errno::last()
        ));
    }
    let (uid, gid) = (user.uid(), user.gid());
    // SAFETY: plain syscalls.
    if unsafe { libc::setresgid(gid, gid, gid) } != 0 {
        return Err(format!(
            "process.user.gid: setresgid {gid}: {}",
            Errno::last()
        ));
    }
    // SAFETY: plain syscall.
    if unsafe { libc::setresuid(uid, uid, uid) } != 0 {
        return Err(format!(
            "process.user.uid: setresuid {uid}: {}",
            Errno::last()
        ));
    }
    prctl(libc::PR_SET_KEEPCAPS, 0, "prctl(PR_SET_KEEPCAPS, 0)")?;
    if let Some(c) = caps {
        capabilities::apply_sets(c)?;
    }
    if nnp {
        prctl(libc::PR_SET_NO_NEW_PRIVS, 1, "prctl(PR_SET_NO_NEW_PRIVS)")?;
        if let Some(f) = seccomp {
            f.install()?;
        }
    }
    Ok((path, argv, envp))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn home_from_passwd() {
        let t = "root:x:0:0:root:/root:/bin/sh\nbad line\napp:x:1000:1000::/home/app:/bin/sh\n";
        assert_eq!(home_of(t, 0).as_deref(), Some("/root"));
        assert_eq!(home_of(t, 1000).as_deref(), Some("/home/app"));
        assert_eq!(home_of(t, 5), None);
    }
}
