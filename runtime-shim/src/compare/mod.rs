//! `sandbox compare`: one battery of probes run in a native container and in a microVM
//! container, through `sandbox run` both times, shown side by side: what the workload sees,
//! what it can reach on the host, what escape drills do, and what isolation costs.

pub mod html;
pub mod probe;
pub mod report;
pub mod scripts;
pub mod surface;

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use serde::Serialize;

use crate::config::RuntimeConfig;
use crate::error::{Error, IoContext, Result};
use crate::image::{busybox, ImageStore};
use crate::state::Isolation;
use probe::{KmsgMark, Outcome, Responsiveness, Shape};

#[derive(Args, Debug)]
pub struct CompareArgs {
    /// Image to probe in (default: the built-in busybox image; it needs busybox's applets).
    #[arg(long)]
    pub image: Option<String>,
    /// Print the report as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Also write an HTML report with charts to this file.
    #[arg(long)]
    pub report: Option<PathBuf>,
}

/// pids limit of the fork-bomb drill and how long the bomb runs.
pub const BOMB_PIDS: i64 = 64;
pub const BOMB_SECS: u64 = 3;
/// Memory limit of the memory-hog drill.
pub const HOG_LIMIT: i64 = 64 << 20;
const PROBE_TIMEOUT: Duration = Duration::from_secs(120);
const STARTUP_RUNS: usize = 3;

/// One isolation's results.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Column {
    pub isolation: String,
    pub ran: bool,
    /// Why the column did not run, or what to keep in mind reading it.
    pub note: Option<String>,
    /// False where the costs do not stand for this isolation on a normal host.
    pub costs_representative: bool,
    pub probes: std::collections::BTreeMap<String, Outcome>,
    /// Host kernel log lines that appeared while the privileged drill ran.
    pub host_log_during_drills: Vec<String>,
    pub host_log_error: Option<String>,
    /// (samples, slowest ms) of host fork+exec+wait of `true` during the fork bomb.
    pub host_responsiveness: Option<(usize, f64)>,
    pub startup_ms: Vec<f64>,
    pub errors: Vec<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub command: String,
    pub image: String,
    pub host_kernel_release: String,
    pub host_kernel_build: String,
    /// `sandbox check`'s KVM kind (kvm_intel, kvm_amd, kvm_pvm, none, unknown).
    pub kvm_kind: String,
    pub kvm_detail: String,
    pub kvm_hardware_speed: bool,
    pub native_surface: surface::NativeSurface,
    pub vm_surface: surface::VmSurface,
    pub native: Column,
    pub vm: Column,
}

pub fn run(g: &RuntimeConfig, a: CompareArgs) -> Result<i32> {
    // What would make the report unwritable is found before minutes of probing, not after.
    if let Some(path) = &a.report {
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => std::path::Path::new("."),
        };
        if !dir.is_dir() {
            return Err(Error::Usage(format!(
                "--report {}: directory {} does not exist",
                path.display(),
                dir.display()
            )));
        }
        let js = html::chart_js_path();
        if !js.is_file() {
            return Err(Error::Usage(format!(
                "--report needs Chart.js at {} (Debian package libjs-chart.js, installed by \
                 scripts/setup.sh; or set SANDBOX_CHART_JS)",
                js.display()
            )));
        }
    }
    let images = ImageStore::new(&g.image_store);
    let cfg = match &a.image {
        Some(name) => images.get(name)?,
        None => busybox::ensure_default(&images)?,
    };
    let lower = images.rootfs(&cfg.name)?;
    let work = g
        .root
        .join(".compare")
        .join(format!("{}", std::process::id()));
    std::fs::create_dir_all(&work).ctx("create", &work)?;
    let result = compare(g, &a, &cfg.name, &lower, &work);
    let _ = std::fs::remove_dir_all(&work);
    // Only removed when no other compare is running.
    let _ = std::fs::remove_dir(g.root.join(".compare"));
    let report = result?;
    if a.json {
        let text =
            serde_json::to_string_pretty(&report).map_err(|e| Error::Other(e.to_string()))?;
        println!("{text}");
    } else {
        print!("{}", report::text(&report));
    }
    if let Some(path) = &a.report {
        let page = html::render(&report)?;
        std::fs::write(path, page).ctx("write the report", path)?;
        if !a.json {
            println!("HTML report: {}", path.display());
        }
    }
    Ok(0)
}

fn compare(
    g: &RuntimeConfig,
    a: &CompareArgs,
    image: &str,
    lower: &std::path::Path,
    work: &std::path::Path,
) -> Result<Report> {
    let rootfs = probe::copy_rootfs(lower, &work.join("rootfs"))?;
    let kvm = crate::host_probe::kvm_report();
    let uts = nix::sys::utsname::uname().map_err(|e| Error::sys("uname", e))?;
    let base = probe::spec_for(&rootfs, "compare", scripts::NOTHING, &Shape::default())?;
    let mut command = String::from("sandbox compare");
    if let Some(i) = &a.image {
        command.push_str(&format!(" --image {i}"));
    }
    let native = column(g, Isolation::Native, work, &rootfs);
    let vm = match vm_ready(g) {
        Ok(()) => {
            let mut c = column(g, Isolation::Vm, work, &rootfs);
            // Only a KVM that cannot be identified gets this far without hardware assistance.
            if !kvm.hardware_speed {
                c.costs_representative = false;
                c.note = Some(format!(
                    "ran with --allow-slow-kvm on a host where {}: costs are not representative",
                    kvm.detail
                ));
            }
            c
        }
        Err(e) => Column {
            isolation: "vm".into(),
            ran: false,
            note: Some(format!("not run: {e}")),
            ..Default::default()
        },
    };
    Ok(Report {
        command,
        image: image.to_string(),
        host_kernel_release: uts.release().to_string_lossy().into_owned(),
        host_kernel_build: uts.version().to_string_lossy().into_owned(),
        kvm_kind: kvm.kind.to_string(),
        kvm_detail: kvm.detail,
        kvm_hardware_speed: kvm.hardware_speed,
        native_surface: surface::native(&base),
        vm_surface: surface::vm(),
        native,
        vm,
    })
}

/// Whether a microVM can be started here: the runtime's own preflight (which refuses kvm-pvm
/// and a missing KVM, and an unidentified KVM unless --allow-slow-kvm), then the guest pieces
/// `sandbox check` looks for, so the column says what is missing instead of failing probe by
/// probe.
fn vm_ready(g: &RuntimeConfig) -> Result<()> {
    crate::sandbox::backend::vm::preflight(g)?;
    let kernel = crate::sandbox::backend::vm::kernel_path();
    if !kernel.is_file() {
        return Err(Error::Vm(format!(
            "guest kernel {} not found",
            kernel.display()
        )));
    }
    crate::sandbox::binaries::find_guest_agent()?;
    crate::sandbox::binaries::find("sandbox-vmm", "SANDBOX_VMM")?;
    Ok(())
}

/// Runs every probe in one isolation. A probe that fails is recorded and the others go on.
fn column(
    g: &RuntimeConfig,
    iso: Isolation,
    work: &std::path::Path,
    rootfs: &std::path::Path,
) -> Column {
    let mut col = Column {
        isolation: iso.to_string(),
        ran: true,
        costs_representative: true,
        ..Default::default()
    };
    let tag = format!("compare-{}-{iso}", std::process::id());
    let one = |name: &str, script: &str, shape: Shape, col: &mut Column| -> Option<Outcome> {
        let id = format!("{tag}-{name}");
        let spec = match probe::spec_for(rootfs, &id, script, &shape) {
            Ok(s) => s,
            Err(e) => {
                col.errors.push(format!("{name}: {e}"));
                return None;
            }
        };
        match probe::run(g, iso, work, &id, &spec, PROBE_TIMEOUT) {
            Ok(o) => {
                col.probes.insert(name.to_string(), o.clone());
                Some(o)
            }
            Err(e) => {
                col.errors.push(format!("{name}: {e}"));
                None
            }
        }
    };

    for i in 0..STARTUP_RUNS {
        if let Some(o) = one(
            &format!("startup{i}"),
            scripts::NOTHING,
            Shape::default(),
            &mut col,
        ) {
            if o.exit_code == Some(0) {
                col.startup_ms.push(o.wall_ms);
            }
            col.probes.remove(&format!("startup{i}"));
        }
    }
    one("sees", scripts::SEES, Shape::default(), &mut col);
    one(
        "costs",
        scripts::COSTS,
        Shape {
            net_admin: true,
            ..Default::default()
        },
        &mut col,
    );

    let devs = probe::mounted_block_devices();
    let names: Vec<&str> = devs.iter().map(|d| d.0.as_str()).collect();
    let mut mark = KmsgMark::now();
    one(
        "privileged",
        scripts::PRIVILEGED,
        Shape {
            privileged: true,
            block_devices: devs.clone(),
            env: vec![format!("BLOCK_DEVS={}", names.join(" "))],
            ..Default::default()
        },
        &mut col,
    );
    col.host_log_during_drills = mark.since();
    col.host_log_error = mark.error.clone();

    let watch = Responsiveness::start();
    one(
        "fork_bomb",
        scripts::FORK_BOMB,
        Shape {
            pids_limit: Some(BOMB_PIDS),
            env: vec![format!("BOMB_SECS={BOMB_SECS}")],
            ..Default::default()
        },
        &mut col,
    );
    col.host_responsiveness = Some(watch.finish());
    one(
        "memory_hog",
        scripts::MEMORY_HOG,
        Shape {
            memory_limit: Some(HOG_LIMIT),
            ..Default::default()
        },
        &mut col,
    );
    col
}
