//! The filters are checked in forked children: the child installs a filter and makes one
//! syscall; the parent sees how the child ended.

use super::*;

/// Forks; the child installs `filter`, runs `body` and exits 0 if it returns.
/// Returns the child's wait status.
fn in_filtered_child(filter: &ThreadFilter, body: fn()) -> libc::c_int {
    // SAFETY: the child only makes raw syscalls (apply_filter builds its sock_fprog on the
    // stack) and leaves with _exit, so nothing in it depends on other threads' state.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        let applied = seccompiler::apply_filter(&filter.refusals)
            .and_then(|()| seccompiler::apply_filter(&filter.allow_list));
        let code = match applied {
            Ok(()) => {
                body();
                0
            }
            Err(_) => 99,
        };
        // SAFETY: terminating the forked child without running the parent's destructors.
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    // SAFETY: waiting for our own child.
    let waited = unsafe { libc::waitpid(pid, &mut status, 0) };
    assert_eq!(waited, pid);
    status
}

fn killed_by_sigsys(status: libc::c_int) -> bool {
    libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGSYS
}

fn exited_cleanly(status: libc::c_int) -> bool {
    libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0
}

fn forbidden_execve() {
    let path = c"/bin/true";
    let argv = [path.as_ptr(), std::ptr::null()];
    // SAFETY: raw execve with valid NUL-terminated arguments; it only returns on failure.
    unsafe {
        libc::syscall(
            libc::SYS_execve,
            path.as_ptr(),
            argv.as_ptr(),
            std::ptr::null::<*const libc::c_char>(),
        )
    };
}

/// Exits 0 from the child only if openat failed with EACCES and opened nothing.
fn refused_openat() {
    // SAFETY: raw openat of a constant path; the errno read right after it.
    let (fd, errno) = unsafe {
        let fd = libc::syscall(
            libc::SYS_openat,
            libc::AT_FDCWD,
            c"/etc/passwd".as_ptr(),
            libc::O_RDONLY,
        );
        (fd, *libc::__errno_location())
    };
    if fd != -1 || errno != libc::EACCES {
        // SAFETY: ending the forked child with a code the parent tells apart.
        unsafe { libc::_exit(3) };
    }
}

fn forbidden_inet_socket() {
    // SAFETY: raw socket(2), no memory involved.
    unsafe { libc::syscall(libc::SYS_socket, libc::AF_INET, libc::SOCK_STREAM, 0) };
}

fn forbidden_kvm_create_vm_ioctl() {
    // KVM_CREATE_VM on an arbitrary fd: the filter decides on the request number alone.
    // SAFETY: raw ioctl on stdin; never reaches the kernel's ioctl handler under the filter.
    unsafe { libc::syscall(libc::SYS_ioctl, 0, 0xae01u64, 0) };
}

fn allowed_write_and_eventfd_read() {
    // SAFETY: raw write of an empty buffer to stderr and a read on a bad fd: both allowed
    // syscalls, whatever they return.
    unsafe {
        libc::syscall(libc::SYS_write, 2, c"".as_ptr(), 0);
        libc::syscall(libc::SYS_read, -1, std::ptr::null_mut::<u8>(), 0);
    }
}

fn allowed_kvm_run_ioctl() {
    // Allowed by the filter; the kernel then refuses it (not a vCPU fd), which is fine.
    // SAFETY: raw ioctl on stdin with no argument.
    unsafe { libc::syscall(libc::SYS_ioctl, 0, rules::KVM_RUN, 0) };
}

fn allowed_unix_socket() {
    // SAFETY: raw socket(2); the fd is closed right away.
    unsafe {
        let fd = libc::syscall(libc::SYS_socket, libc::AF_UNIX, libc::SOCK_STREAM, 0);
        libc::syscall(libc::SYS_close, fd);
    }
}

#[test]
fn every_filter_compiles() {
    let filters = Filters::build().unwrap();
    for kind in ThreadKind::ALL {
        assert!(!filters.get(kind).allow_list.is_empty(), "{kind:?}");
        assert!(!filters.get(kind).refusals.is_empty(), "{kind:?}");
    }
}

#[test]
fn syscall_outside_the_list_kills_with_sigsys() {
    let filters = Filters::build().unwrap();
    for kind in ThreadKind::ALL {
        let program = filters.get(kind);
        for (what, body) in [
            ("execve", forbidden_execve as fn()),
            ("AF_INET socket", forbidden_inet_socket),
        ] {
            let status = in_filtered_child(program, body);
            assert!(
                killed_by_sigsys(status),
                "{kind:?} filter let {what} through (status {status:#x})"
            );
        }
    }
}

#[test]
fn opening_a_file_fails_with_eacces_and_the_thread_lives() {
    let filters = Filters::build().unwrap();
    for kind in ThreadKind::ALL {
        let status = in_filtered_child(filters.get(kind), refused_openat);
        assert!(
            exited_cleanly(status),
            "{kind:?}: openat was not refused with EACCES (status {status:#x})"
        );
    }
}

#[test]
fn listed_syscalls_still_work_under_the_filter() {
    let filters = Filters::build().unwrap();
    for kind in ThreadKind::ALL {
        let status = in_filtered_child(filters.get(kind), allowed_write_and_eventfd_read);
        assert!(exited_cleanly(status), "{kind:?}: status {status:#x}");
    }
}

#[test]
fn ioctls_are_limited_to_the_listed_requests() {
    let filters = Filters::build().unwrap();
    assert!(exited_cleanly(in_filtered_child(
        &filters.vcpu,
        allowed_kvm_run_ioctl
    )));
    assert!(killed_by_sigsys(in_filtered_child(
        &filters.vcpu,
        forbidden_kvm_create_vm_ioctl
    )));
    // Neither the event loop nor the main thread may run a vCPU.
    assert!(killed_by_sigsys(in_filtered_child(
        &filters.device_loop,
        allowed_kvm_run_ioctl
    )));
    assert!(killed_by_sigsys(in_filtered_child(
        &filters.main,
        allowed_kvm_run_ioctl
    )));
}

#[test]
fn device_loop_sockets_are_unix_only() {
    let filters = Filters::build().unwrap();
    assert!(exited_cleanly(in_filtered_child(
        &filters.device_loop,
        allowed_unix_socket
    )));
    assert!(killed_by_sigsys(in_filtered_child(
        &filters.vcpu,
        allowed_unix_socket
    )));
}

const THREAD_CHILD_ENV: &str = "VMM_SECCOMP_THREAD_CHILD";

/// Runs only as the child of `forbidden_syscall_on_a_filtered_thread_kills_the_process`.
#[test]
#[ignore = "run by forbidden_syscall_on_a_filtered_thread_kills_the_process"]
fn thread_child() {
    if std::env::var_os(THREAD_CHILD_ENV).is_none() {
        return;
    }
    let program = build(ThreadKind::Vcpu).unwrap();
    let t = std::thread::spawn(move || {
        install(ThreadKind::Vcpu, &program).unwrap();
        println!("filter installed");
        forbidden_inet_socket();
    });
    let _ = t.join();
    println!("survived");
}

#[test]
fn forbidden_syscall_on_a_filtered_thread_kills_the_process() {
    // A separate process (this test binary again), so that nothing but the thread under test
    // runs there: one thread installs the vCPU filter and opens an AF_INET socket.
    use std::os::unix::process::ExitStatusExt;
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "seccomp::tests::thread_child",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(THREAD_CHILD_ENV, "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("filter installed"), "{stdout}");
    assert!(!stdout.contains("survived"), "{stdout}");
    assert_eq!(out.status.signal(), Some(libc::SIGSYS), "{:?}", out.status);
}

#[test]
fn lists_have_no_set_up_syscalls() {
    for kind in ThreadKind::ALL {
        let allowed = allowed_syscalls(kind);
        for forbidden in [
            libc::SYS_openat,
            libc::SYS_execve,
            libc::SYS_clone,
            libc::SYS_clone3,
            libc::SYS_fork,
            libc::SYS_ptrace,
            libc::SYS_mount,
            libc::SYS_bind,
        ] {
            assert!(!allowed.contains(&forbidden), "{kind:?} allows {forbidden}");
        }
    }
}

#[test]
fn the_main_thread_signals_only_its_own_process() {
    // SAFETY: the child builds and installs its own filter (the rule names the pid of the
    // process that builds it), makes raw syscalls and leaves with _exit.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        let code = match build(ThreadKind::Main) {
            Ok(filter) => {
                let applied = seccompiler::apply_filter(&filter.refusals)
                    .and_then(|()| seccompiler::apply_filter(&filter.allow_list));
                if applied.is_err() {
                    99
                } else {
                    // SAFETY: signal 0 only checks that the target exists.
                    let own = unsafe {
                        libc::syscall(libc::SYS_tgkill, libc::getpid(), libc::gettid(), 0)
                    };
                    if own != 0 {
                        98
                    } else {
                        // SAFETY: as above; the filter is expected to kill us first.
                        unsafe {
                            libc::syscall(libc::SYS_tgkill, libc::getppid(), libc::getppid(), 0)
                        };
                        0
                    }
                }
            }
            Err(_) => 97,
        };
        // SAFETY: terminating the forked child without running the parent's destructors.
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    // SAFETY: waiting for our own child.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(killed_by_sigsys(status), "status {status:#x}");
}
