//! `sandbox-vmm`: boots one microVM and exits when it stops.
//!
//! Exit status: 0 the guest reset itself (its way to power off), 1 the VM could not be set
//! up, 2 bad usage, 3 the VM ended with an error (unhandled vCPU exit, failed device).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use clap::{Args, Parser, Subcommand};

use vmm::arch::x86_64::cpu_template::CpuTemplate;
use vmm::config::{key_value, SerialOutput, VmConfig};
use vmm::device_manager::virtio::VirtioDevices;
use vmm::devices::legacy::BootComplete;
use vmm::devices::virtio::block::BlockConfig;
use vmm::devices::virtio::event_loop::EventLoopHandle;
use vmm::devices::virtio::fs::FsConfig;
use vmm::devices::virtio::net::NetConfig;
use vmm::devices::virtio::vsock::VsockConfig;
use vmm::jail::{self, JailConfig};
use vmm::seccomp::{self, Filters, StartGate, ThreadKind};
use vmm::{check, exit_code, logger, VmExit, VmmBuilder};

#[derive(Parser)]
#[command(name = "sandbox-vmm", version, about = "Boots a KVM microVM")]
#[command(args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Report whether this host can run microVMs, and how fast guest kernel code runs.
    Check {
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args)]
struct RunArgs {
    /// JSON file with the VM configuration; flags given as well override its values.
    #[arg(long, value_name = "FILE.json")]
    config: Option<PathBuf>,
    /// Guest kernel: ELF vmlinux or bzImage.
    #[arg(long)]
    kernel: Option<PathBuf>,
    /// Initial ramdisk.
    #[arg(long)]
    initrd: Option<PathBuf>,
    /// Kernel command line (default: "console=ttyS0 reboot=k panic=1 pci=off").
    #[arg(long)]
    cmdline: Option<String>,
    /// Number of vCPUs.
    #[arg(long)]
    vcpus: Option<u8>,
    /// Guest memory in MiB.
    #[arg(long)]
    mem_mib: Option<u64>,
    /// Where COM1 output goes: stdout, none or file:PATH.
    #[arg(long)]
    serial: Option<SerialOutput>,
    /// CPU template: none (all KVM supports) or minimal (baseline x86-64).
    #[arg(long)]
    cpu_template: Option<CpuTemplate>,
    /// Attach a virtio-blk disk backed by a raw image; repeat for several disks (vda, vdb,
    /// ...). ro=on offers it read-only; id= sets the serial the guest reads (up to 20 chars).
    #[arg(long, value_name = "path=IMG[,ro=on][,id=ID]")]
    disk: Vec<BlockConfig>,
    /// Attach a virtio-net NIC on the TAP interface NAME (opened with a vnet header; created
    /// if missing, which needs CAP_NET_ADMIN); repeat for several NICs (eth0, eth1, ...).
    /// mac= is the address the guest sees (default: the guest driver picks a random one).
    #[arg(long, value_name = "tap=NAME[,mac=MAC]")]
    net: Vec<NetConfig>,
    /// Attach a virtio-vsock device: the guest has context ID N; host clients connect to the
    /// unix socket SOCK and write `CONNECT <port>\n` (answer: `OK <hostport>\n`, then the
    /// stream); guest connections to host port P go to the unix socket `SOCK_P`.
    #[arg(long, value_name = "cid=N,path=SOCK")]
    vsock: Option<VsockConfig>,
    /// Attach a virtio-fs device: the guest mounts it with `mount -t virtiofs T DIR`; a
    /// vhost-user backend (virtiofsd) must be listening on the unix socket S. Repeat for
    /// several shared directories, each with its own tag. Guest memory is then a shared memfd.
    #[arg(long, value_name = "tag=T,socket=S")]
    fs: Vec<FsConfig>,
    /// Attach a virtio-rng entropy device fed by the host's getrandom.
    #[arg(long, value_name = "on|off", num_args = 0..=1, default_missing_value = "on",
          value_parser = parse_on_off)]
    rng: Option<bool>,
    /// Once its devices are open, confine the process: join the cgroup C (after writing its
    /// memory.max, default guest memory + 128 MiB, and cpu.max, default one CPU per vCPU
    /// plus one), make D the root of a private mount namespace, and drop to UID/GID with
    /// no_new_privs. Needs root. Relative paths (the --vsock path must be one) are taken
    /// relative to D.
    #[arg(
        long,
        value_name = "dir=D,uid=UID,gid=GID[,cgroup=C][,mem-max-mib=N][,cpu-max-pct=P]"
    )]
    jail: Option<JailConfig>,
    /// Do not install the per-thread seccomp filters (debugging only).
    #[arg(long)]
    no_seccomp: bool,
}

fn parse_on_off(s: &str) -> Result<bool, String> {
    key_value::on_off(s).ok_or_else(|| format!("expected on or off, got `{s}`"))
}

impl RunArgs {
    fn into_config(self) -> Result<VmConfig, vmm::config::ConfigError> {
        let mut config = match &self.config {
            Some(path) => VmConfig::from_file(path)?,
            None => VmConfig::new(self.kernel.clone().unwrap_or_default()),
        };
        if let Some(kernel) = self.kernel {
            config.kernel = kernel;
        }
        if self.initrd.is_some() {
            config.initrd = self.initrd;
        }
        if self.cmdline.is_some() {
            config.cmdline = self.cmdline;
        }
        if let Some(vcpus) = self.vcpus {
            config.vcpus = vcpus;
        }
        if let Some(mem) = self.mem_mib {
            config.mem_mib = mem;
        }
        if let Some(serial) = self.serial {
            config.serial = serial;
        }
        if let Some(template) = self.cpu_template {
            config.cpu_template = template;
        }
        // Disks given as flags come after those of the config file.
        config.disks.extend(self.disk);
        // NICs likewise; a --vsock flag replaces the config file's vsock device.
        config.nets.extend(self.net);
        if self.vsock.is_some() {
            config.vsock = self.vsock;
        }
        config.fs.extend(self.fs);
        if self.jail.is_some() {
            config.jail = self.jail;
        }
        if let Some(rng) = self.rng {
            config.rng = rng;
        }
        if self.no_seccomp {
            config.seccomp = false;
        }
        Ok(config)
    }
}

fn run_vm(args: RunArgs, start: Instant, start_monotonic_us: u64) -> i32 {
    let config = match args.into_config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("sandbox-vmm: {e}");
            return exit_code::SETUP_ERROR;
        }
    };
    eprint!("{}", BootComplete::started_line(start_monotonic_us));
    let (vmm, devices) = match build_vm(&config, start) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("sandbox-vmm: {e}");
            return exit_code::SETUP_ERROR;
        }
    };
    eprint!(
        "{}",
        BootComplete::vcpus_started_line(start.elapsed().as_micros())
    );
    let exit = vmm.wait();
    if let Err(e) = devices.stop() {
        eprintln!("sandbox-vmm: {e}");
    }
    if !matches!(exit, VmExit::GuestReset) {
        eprintln!("sandbox-vmm: VM stopped: {exit}");
    }
    exit.exit_code()
}

/// Builds the VM with its virtio devices and starts the device event loop and the vCPUs.
fn build_vm(
    config: &VmConfig,
    start: Instant,
) -> Result<(vmm::Vmm, EventLoopHandle), Box<dyn std::error::Error>> {
    if let Some(jail) = &config.jail {
        config.validate()?;
        jail::prepare(&jail.dir)?;
    }
    let mut builder = VmmBuilder::new(config, start)?;
    let mut virtio = VirtioDevices::new()?;
    builder.attach_virtio_devices(&mut virtio)?;
    if let Some(jail) = &config.jail {
        // Everything opened by path is open after this (KVM, serial file, disks, TAPs, the
        // vsock listener, then kernel and initrd), and no other thread runs: the device loop
        // and the vCPUs start inside the jail, sharing its root.
        builder.load()?;
        jail::enter(&jail.spec(config.mem_mib, config.vcpus))?;
    }
    if !config.seccomp {
        let devices = virtio.start(|| Ok(()), builder.stop_handle())?;
        return match builder.start() {
            Ok(vmm) => Ok((vmm, devices)),
            Err(e) => {
                let _ = devices.stop();
                Err(e.into())
            }
        };
    }

    // Every thread installs its own filter before the guest runs: the device loop first
    // thing on its thread, each vCPU thread before its first KVM_RUN, after which it waits
    // at the gate until this thread has installed the main filter.
    let filters = Filters::build()?;
    let loop_filter = filters.device_loop.clone();
    let devices = virtio.start(
        move || seccomp::install(ThreadKind::DeviceLoop, &loop_filter).map_err(|e| e.to_string()),
        builder.stop_handle(),
    )?;
    let gate = Arc::new(StartGate::new());
    let vcpu_filter = filters.vcpu.clone();
    let vcpu_gate = gate.clone();
    builder.on_vcpu_thread_start(Arc::new(move |_id| {
        seccomp::install(ThreadKind::Vcpu, &vcpu_filter).map_err(|e| e.to_string())?;
        if vcpu_gate.wait() {
            Ok(())
        } else {
            Err("VM start-up was aborted".into())
        }
    }));
    let vmm = match builder.start() {
        Ok(vmm) => vmm,
        Err(e) => {
            gate.abort();
            let _ = devices.stop();
            return Err(e.into());
        }
    };
    // From here on this thread only waits for the VM and tears it down.
    if let Err(e) = seccomp::install(ThreadKind::Main, &filters.main) {
        gate.abort();
        let _ = devices.stop();
        let _ = vmm.wait();
        return Err(e.into());
    }
    gate.open();
    Ok((vmm, devices))
}

/// CLOCK_MONOTONIC in microseconds: the clock other processes place the VMM's offsets on.
fn monotonic_us() -> u64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes only the timespec it is given.
    if unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut t) } != 0 {
        return 0;
    }
    t.tv_sec as u64 * 1_000_000 + t.tv_nsec as u64 / 1_000
}

fn main() -> ExitCode {
    let start = Instant::now();
    let start_monotonic_us = monotonic_us();
    logger::init();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() {
                exit_code::USAGE as u8
            } else {
                0
            });
        }
    };
    let code = match cli.command {
        Some(Command::Check { json }) => {
            let report = check::run_check();
            if json {
                match serde_json::to_string_pretty(&report) {
                    Ok(text) => println!("{text}"),
                    Err(e) => eprintln!("sandbox-vmm: {e}"),
                }
            } else {
                print!("{}", report.to_text());
            }
            if report.ok {
                0
            } else {
                exit_code::SETUP_ERROR
            }
        }
        None => run_vm(cli.run, start, start_monotonic_us),
    };
    ExitCode::from(code as u8)
}
