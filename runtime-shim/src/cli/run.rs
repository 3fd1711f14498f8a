//! `sandbox run`: create, start and wait for a container, then delete it. Two forms:
//! runc's (`run [-b BUNDLE] ID`, the bundle as it is) and one for people (`run [--image NAME |
//! --rootfs DIR | --bundle DIR] [options] -- CMD...`), which writes a bundle of its own.

use std::path::{Path, PathBuf};

use clap::Args;
use oci_spec::runtime::{
    LinuxCpuBuilder, LinuxMemoryBuilder, LinuxNamespaceType, LinuxResourcesBuilder, Mount,
    MountBuilder, RootBuilder, Spec,
};

use crate::bundle::Bundle;
use crate::config::RuntimeConfig;
use crate::error::{Error, IoContext, Result};
use crate::image::{busybox, ImageStore};
use crate::sandbox::foreground;
use crate::sandbox::launch::{self, CreateOptions};
use crate::sandbox::link;
use crate::sandbox::timings::{self, Timeline};
use crate::state::{Cleanup, Isolation, StateStore};

#[derive(Args, Debug)]
pub struct RunArgs {
    /// Run this image from the local store (default: the built-in busybox image).
    #[arg(long, conflicts_with_all = ["rootfs", "bundle"])]
    pub image: Option<String>,
    /// Run with this directory as the root filesystem.
    #[arg(long, conflicts_with = "bundle")]
    pub rootfs: Option<PathBuf>,
    /// Run this OCI bundle.
    #[arg(short, long)]
    pub bundle: Option<PathBuf>,
    /// Give the process a terminal.
    #[arg(short, long)]
    pub tty: bool,
    /// Keep stdin open (without it the process reads /dev/null in the image form).
    #[arg(short, long)]
    pub interactive: bool,
    /// Set an environment variable (K=V).
    #[arg(short, long = "env")]
    pub env: Vec<String>,
    /// Bind mount HOST:CONTAINER[:ro].
    #[arg(short, long = "volume")]
    pub volume: Vec<String>,
    /// CPU limit in CPUs (e.g. 1.5).
    #[arg(long)]
    pub cpus: Option<f64>,
    /// Memory limit (e.g. 512m, 1g, or bytes).
    #[arg(long)]
    pub memory: Option<String>,
    /// `none` (an empty network namespace) or a network namespace name or path.
    #[arg(long)]
    pub network: Option<String>,
    /// Return once the container has started, leaving it running.
    #[arg(short, long)]
    pub detach: bool,
    #[arg(long = "pid-file")]
    pub pid_file: Option<PathBuf>,
    #[arg(long = "console-socket")]
    pub console_socket: Option<PathBuf>,
    /// Do not delete the container after it exits.
    #[arg(long)]
    pub keep: bool,
    /// Print when each phase of the start and the end happened (to stderr).
    #[arg(long)]
    pub timings: bool,
    #[arg(long = "no-pivot", hide = true)]
    pub no_pivot: bool,
    #[arg(long = "no-new-keyring", hide = true)]
    pub no_new_keyring: bool,
    /// Container id (generated when omitted).
    pub id: Option<String>,
    /// The command to run, after `--`.
    #[arg(last = true)]
    pub command: Vec<String>,
}

impl RunArgs {
    fn has_overrides(&self) -> bool {
        self.tty
            || !self.env.is_empty()
            || !self.volume.is_empty()
            || self.cpus.is_some()
            || self.memory.is_some()
            || self.network.is_some()
            || !self.command.is_empty()
    }
}

// On the paths that return early the monitor is either waited for or deliberately left running
// (detached), and it is reparented when we exit.
#[allow(clippy::zombie_processes)]
pub fn run(g: &RuntimeConfig, a: RunArgs) -> Result<i32> {
    let run_started = timings::monotonic_us();
    let id =
        a.id.clone()
            .unwrap_or_else(|| crate::state::generated_id("run"));
    crate::state::validate_id(&id)?;
    let store = StateStore::new(&g.root);
    if store.exists(&id) {
        return Err(Error::AlreadyExists(id));
    }
    let runc_form =
        a.image.is_none() && a.rootfs.is_none() && (a.id.is_some() || a.bundle.is_some());

    let mut cleanup = Cleanup::default();
    let (bundle_dir, stdin_null) = if runc_form && !a.has_overrides() {
        (
            a.bundle.clone().unwrap_or_else(|| PathBuf::from(".")),
            false,
        )
    } else {
        let made = make_bundle(g, &a, &id, &mut cleanup);
        match made {
            Ok(dir) => (dir, !a.interactive && !runc_form),
            Err(e) => {
                crate::sandbox::backend::vm::release(&cleanup);
                return Err(e);
            }
        }
    };
    let tty = Bundle::load(&bundle_dir)
        .ok()
        .and_then(|b| b.spec.process().as_ref().and_then(|p| p.terminal()))
        .unwrap_or(false);

    let sigs = foreground::block_forwarded();
    if !a.detach && g.isolation == Isolation::Native {
        // The agent leaves a native container's init to the nearest subreaper above it:
        // that is us, so we reap it and exit with its status, as `runc run` does.
        foreground::become_subreaper();
    }
    let created = launch::create_container(
        g,
        &CreateOptions {
            id: id.clone(),
            bundle: bundle_dir,
            console_socket: a.console_socket.clone(),
            pid_file: a.pid_file.clone(),
            foreground: true,
            stdin_null,
            cleanup: cleanup.clone(),
        },
    );
    let (reported_pid, monitor) = match created {
        Ok(v) => v,
        Err(e) => {
            if !store.exists(&id) {
                crate::sandbox::backend::vm::release(&cleanup);
            }
            return Err(e);
        }
    };
    let monitor = monitor.expect("foreground create returns the monitor");
    let raw = if a.console_socket.is_none() {
        foreground::raw_terminal(tty)
    } else {
        None
    };
    let rec = store.load(&id)?;
    let endpoint = link::endpoint(&rec);
    let process = agent::protocol::ProcessRef::init(&id);
    if raw.is_some() {
        foreground::push_window_size(&endpoint, &process);
    }
    if let Err(e) = launch::start_container(g, &id) {
        drop(raw);
        launch::destroy(&store, &id);
        let mut monitor = monitor;
        let _ = monitor.wait();
        return Err(e);
    }
    if a.detach {
        drop(raw);
        println!("{id}");
        // The monitor lives on (reparented) as the container's process.
        std::mem::forget(monitor);
        return Ok(0);
    }
    let init = (rec.isolation == Isolation::Native).then_some(reported_pid);
    let code = foreground::wait(monitor, init, endpoint, process, tty, sigs);
    drop(raw);
    if a.timings {
        let mut phases = vec![("run started".to_string(), run_started)];
        phases.extend(Timeline::in_dir(&store.dir(&id)).phases());
        eprint!("{}", timings::table(run_started, &phases));
    }
    // A back end that died under the container (VMM crash, killed agent) is reported, not
    // passed off as the container's own exit.
    if let Some(why) = store.loss(&id) {
        eprintln!("sandbox: {why}");
    }
    if !a.keep {
        launch::destroy(&store, &id);
    }
    Ok(code)
}

/// Writes a bundle under `<root>/.bundles/<id>`: the spec from the given bundle, or a fresh
/// one for an image or rootfs, with the command-line options applied.
fn make_bundle(g: &RuntimeConfig, a: &RunArgs, id: &str, cleanup: &mut Cleanup) -> Result<PathBuf> {
    let isolation = g.isolation;
    let dir = g.root.join(".bundles").join(id);
    std::fs::create_dir_all(&dir).ctx("create bundle", &dir)?;
    cleanup.dirs.push(dir.clone());

    let (mut spec, image_cfg) = if let Some(b) = &a.bundle {
        let bundle = Bundle::load(b)?;
        let mut spec = bundle.spec;
        let readonly = spec
            .root()
            .as_ref()
            .and_then(|r| r.readonly())
            .unwrap_or(false);
        set_root(&mut spec, &bundle.rootfs, readonly)?;
        (spec, None)
    } else if let Some(r) = &a.rootfs {
        let rootfs = std::fs::canonicalize(r)
            .map_err(|e| Error::Usage(format!("--rootfs {}: {e}", r.display())))?;
        if !rootfs.is_dir() {
            return Err(Error::Usage(format!(
                "--rootfs {} is not a directory",
                r.display()
            )));
        }
        let mut spec = base_spec(id);
        set_root(&mut spec, &rootfs, false)?;
        (spec, None)
    } else {
        let images = ImageStore::new(&g.image_store);
        let cfg = match &a.image {
            Some(name) => images.get(name)?,
            None => busybox::ensure_default(&images)?,
        };
        let lower = images.rootfs(&cfg.name)?;
        let rootfs = match isolation {
            // The VM gets the image as a read-only disk with its own writable layer.
            Isolation::Vm => lower,
            // Natively, an overlay keeps the container's writes out of the image.
            Isolation::Native => overlay_rootfs(&dir, &lower, cleanup)?,
        };
        let mut spec = base_spec(id);
        set_root(&mut spec, &rootfs, false)?;
        (spec, Some(cfg))
    };

    let mut process = spec.process().clone().unwrap_or_default();
    if let Some(cfg) = &image_cfg {
        let mut args = cfg.entrypoint.clone();
        args.extend(if a.command.is_empty() {
            cfg.cmd.clone()
        } else {
            a.command.clone()
        });
        if args.is_empty() {
            return Err(Error::Usage(format!(
                "image {} names no command; give one after --",
                cfg.name
            )));
        }
        process.set_args(Some(args));
        let mut env = process.env().clone().unwrap_or_default();
        merge_env(&mut env, &cfg.env);
        process.set_env(Some(env));
        if !cfg.working_dir.is_empty() {
            process.set_cwd(cfg.working_dir.clone().into());
        }
    } else if !a.command.is_empty() {
        process.set_args(Some(a.command.clone()));
    }
    for kv in &a.env {
        if !kv.contains('=') {
            return Err(Error::Usage(format!("-e {kv:?}: expected KEY=VALUE")));
        }
    }
    let mut env = process.env().clone().unwrap_or_default();
    merge_env(&mut env, &a.env);
    process.set_env(Some(env));
    if a.tty {
        process.set_terminal(Some(true));
    } else if image_cfg.is_some() || a.rootfs.is_some() {
        process.set_terminal(Some(false));
    }
    spec.set_process(Some(process));

    let mut mounts = spec.mounts().clone().unwrap_or_default();
    for v in &a.volume {
        mounts.push(parse_volume(v)?);
    }
    spec.set_mounts(Some(mounts));

    if a.cpus.is_some() || a.memory.is_some() {
        let mut linux = spec.linux().clone().unwrap_or_default();
        let mut res = linux.resources().clone().unwrap_or_else(|| {
            LinuxResourcesBuilder::default()
                .build()
                .expect("empty resources")
        });
        if let Some(cpus) = a.cpus {
            if !(cpus > 0.0 && cpus <= 1024.0) {
                return Err(Error::Usage(format!(
                    "--cpus {cpus}: expected a number of CPUs above 0"
                )));
            }
            let cpu = LinuxCpuBuilder::default()
                .quota((cpus * 100_000.0) as i64)
                .period(100_000u64)
                .build()
                .map_err(|e| Error::Usage(e.to_string()))?;
            res.set_cpu(Some(cpu));
        }
        if let Some(m) = &a.memory {
            let bytes = parse_size(m)?;
            let mem = LinuxMemoryBuilder::default()
                .limit(bytes as i64)
                .build()
                .map_err(|e| Error::Usage(e.to_string()))?;
            res.set_memory(Some(mem));
        }
        linux.set_resources(Some(res));
        spec.set_linux(Some(linux));
    }

    if let Some(net) = &a.network {
        set_network(&mut spec, net)?;
    }

    let text = serde_json::to_string_pretty(&spec).map_err(|e| Error::Other(e.to_string()))?;
    crate::state::write_atomic(&dir.join("config.json"), text.as_bytes())?;
    Ok(dir)
}

fn base_spec(id: &str) -> Spec {
    let mut spec = Spec::default();
    spec.set_hostname(Some(id.chars().take(63).collect()));
    spec
}

fn set_root(spec: &mut Spec, rootfs: &Path, readonly: bool) -> Result<()> {
    let root = RootBuilder::default()
        .path(rootfs.to_path_buf())
        .readonly(readonly)
        .build()
        .map_err(|e| Error::Other(e.to_string()))?;
    spec.set_root(Some(root));
    Ok(())
}

fn overlay_rootfs(bundle: &Path, lower: &Path, cleanup: &mut Cleanup) -> Result<PathBuf> {
    let upper = bundle.join("upper");
    let work = bundle.join("work");
    let merged = bundle.join("rootfs");
    for d in [&upper, &work, &merged] {
        std::fs::create_dir_all(d).ctx("create", d)?;
    }
    let data = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.display(),
        upper.display(),
        work.display()
    );
    nix::mount::mount(
        Some("overlay"),
        &merged,
        Some("overlay"),
        nix::mount::MsFlags::empty(),
        Some(data.as_str()),
    )
    .map_err(|e| Error::sys("mount the overlay rootfs", e))?;
    cleanup.mounts.push(merged.clone());
    Ok(merged)
}

fn merge_env(env: &mut Vec<String>, add: &[String]) {
    for kv in add {
        let key = kv.split('=').next().unwrap_or("");
        env.retain(|e| e.split('=').next() != Some(key));
        env.push(kv.clone());
    }
}

pub fn parse_volume(v: &str) -> Result<Mount> {
    let parts: Vec<&str> = v.split(':').collect();
    let (host, ctr, ro) = match parts.as_slice() {
        [h, c] => (*h, *c, false),
        [h, c, "ro"] => (*h, *c, true),
        [h, c, "rw"] => (*h, *c, false),
        _ => {
            return Err(Error::Usage(format!(
                "-v {v:?}: expected HOST:CONTAINER[:ro]"
            )))
        }
    };
    let host =
        std::fs::canonicalize(host).map_err(|e| Error::Usage(format!("-v {v:?}: {host}: {e}")))?;
    if !ctr.starts_with('/') {
        return Err(Error::Usage(format!(
            "-v {v:?}: the container path must be absolute"
        )));
    }
    let mut options = vec!["rbind".to_string(), "rprivate".to_string()];
    options.push(if ro { "ro" } else { "rw" }.to_string());
    MountBuilder::default()
        .destination(PathBuf::from(ctr))
        .typ("bind")
        .source(host)
        .options(options)
        .build()
        .map_err(|e| Error::Usage(e.to_string()))
}

pub fn parse_size(s: &str) -> Result<u64> {
    let t = s.trim().to_ascii_lowercase();
    let t = t.strip_suffix('b').unwrap_or(&t);
    let (num, mult) = match t.chars().last() {
        Some('k') => (&t[..t.len() - 1], 1u64 << 10),
        Some('m') => (&t[..t.len() - 1], 1 << 20),
        Some('g') => (&t[..t.len() - 1], 1 << 30),
        _ => (t, 1),
    };
    let n: f64 = num
        .parse()
        .map_err(|_| Error::Usage(format!("--memory {s:?}: expected a size like 512m or 1g")))?;
    let bytes = (n * mult as f64) as u64;
    if bytes < 4 << 20 {
        return Err(Error::Usage(format!(
            "--memory {s:?}: at least 4m is needed"
        )));
    }
    Ok(bytes)
}

fn set_network(spec: &mut Spec, net: &str) -> Result<()> {
    let mut linux = spec.linux().clone().unwrap_or_default();
    let mut nss = linux.namespaces().clone().unwrap_or_default();
    let path = if net == "none" {
        None
    } else {
        let p = if net.contains('/') {
            PathBuf::from(net)
        } else {
            PathBuf::from("/var/run/netns").join(net)
        };
        if !p.exists() {
            return Err(Error::Usage(format!(
                "--network {net}: {} does not exist",
                p.display()
            )));
        }
        Some(p)
    };
    nss.retain(|n| n.typ() != LinuxNamespaceType::Network);
    let mut ns = oci_spec::runtime::LinuxNamespace::default();
    ns.set_typ(LinuxNamespaceType::Network);
    ns.set_path(path);
    nss.push(ns);
    linux.set_namespaces(Some(nss));
    spec.set_linux(Some(linux));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512m").unwrap(), 512 << 20);
        assert_eq!(parse_size("1G").unwrap(), 1 << 30);
        assert_eq!(parse_size("1.5g").unwrap(), 3 << 29);
        assert!(parse_size("lots").is_err());
        assert!(parse_size("1k").is_err());
    }

    #[test]
    fn volumes() {
        let m = parse_volume("/tmp:/data:ro").unwrap();
        assert_eq!(m.destination(), Path::new("/data"));
        assert!(m.options().as_ref().unwrap().contains(&"ro".to_string()));
        assert!(parse_volume("/tmp").is_err());
        assert!(parse_volume("/tmp:relative").is_err());
        assert!(parse_volume("/does-not-exist-x:/d").is_err());
    }
}
