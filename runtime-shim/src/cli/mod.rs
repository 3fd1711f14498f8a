//! The `sandbox` command line: runc's commands and flags (so containerd's runc shim, Docker's
//! `--runtime` and other runc callers can drive it), plus `run` for people, `image` and `check`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::config::{self, LogFormat, Logging, RootfsPath, RuntimeConfig};
use crate::state::Isolation;

pub mod check;
pub mod create;
pub mod delete;
pub mod events;
pub mod exec;
pub mod features;
pub mod image;
pub mod kill;
pub mod list;
pub mod ps;
pub mod run;
pub mod spec;
pub mod start;
pub mod state;
pub mod update;

#[derive(Parser, Debug)]
#[command(
    name = "sandbox",
    version,
    about = "An OCI runtime that runs every container in its own microVM"
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalOpts,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args, Debug, Clone)]
pub struct GlobalOpts {
    /// Directory holding one state directory per container.
    #[arg(
        long,
        global = true,
        default_value = config::DEFAULT_ROOT,
        env = "SANDBOX_ROOT"
    )]
    pub root: PathBuf,
    /// Write log messages to this file instead of stderr.
    #[arg(long, global = true)]
    pub log: Option<PathBuf>,
    #[arg(long = "log-format", global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    #[arg(long, global = true)]
    pub debug: bool,
    /// How containers are isolated: each sandbox in its own microVM, or in namespaces on the
    /// host kernel.
    #[arg(long, global = true, value_enum, env = "SANDBOX_ISOLATION")]
    pub isolation: Option<Isolation>,
    /// Run microVMs on a KVM that cannot be identified as hardware-assisted, where guest
    /// kernels may be emulated (very slow). Never enough on kvm-pvm or without KVM.
    #[arg(
        long = "allow-slow-kvm",
        global = true,
        env = config::ALLOW_SLOW_KVM_ENV,
        value_parser = config::parse_switch
    )]
    pub allow_slow_kvm: bool,
    /// Start every VMM confined (the default): its own root directory, uid/gid 65534 and
    /// no_new_privs (docs/security.md). `--jail-vmm=false` starts it unconfined.
    #[arg(
        long = "jail-vmm",
        global = true,
        env = config::JAIL_VMM_ENV,
        value_parser = config::parse_switch,
        num_args = 0..=1,
        require_equals = true,
        default_value_t = RuntimeConfig::default().jail_vmm,
        default_missing_value = "true",
        value_name = "true|false"
    )]
    pub jail_vmm: bool,
    /// Also put every jailed VMM in a cgroup of its own that caps its memory (guest memory +
    /// 128 MiB) and CPU (one per vCPU plus one); off by default, docs/security.md.
    #[arg(
        long = "cap-vmm",
        global = true,
        env = config::CAP_VMM_ENV,
        value_parser = config::parse_switch,
        num_args = 0..=1,
        require_equals = true,
        default_value_t = RuntimeConfig::default().cap_vmm,
        default_missing_value = "true",
        value_name = "true|false"
    )]
    pub cap_vmm: bool,
    /// Where imported images and cached rootfs disk images live.
    #[arg(
        long = "image-store",
        global = true,
        default_value = config::DEFAULT_IMAGE_STORE,
        env = "SANDBOX_IMAGE_STORE"
    )]
    pub image_store: PathBuf,
    /// How a container's rootfs reaches a VM: `shared` (the directory itself, through
    /// virtio-fs: the host sees the container's writes, as `docker commit` needs), `image`
    /// (a content-cached read-only ext4 image plus a writable disk), or `auto`: `image` for a
    /// rootfs in the image store (`sandbox run` of an image, whose files must stay as they
    /// are), `shared` for every other bundle.
    #[arg(
        long = "vm-rootfs",
        global = true,
        value_enum,
        default_value_t = RootfsPath::Auto,
        env = "SANDBOX_VM_ROOTFS"
    )]
    pub vm_rootfs: RootfsPath,
    /// Accepted for runc compatibility; cgroups are managed by the agent.
    #[arg(long = "systemd-cgroup", global = true, hide = true)]
    pub systemd_cgroup: bool,
    /// Accepted for runc compatibility.
    #[arg(long, global = true, hide = true)]
    pub rootless: Option<String>,
    /// Accepted for runc compatibility; checkpointing is not supported.
    #[arg(long, global = true, hide = true)]
    pub criu: Option<PathBuf>,
}

impl GlobalOpts {
    pub fn runtime_config(&self) -> RuntimeConfig {
        RuntimeConfig {
            root: self.root.clone(),
            image_store: self.image_store.clone(),
            isolation: self.isolation.unwrap_or(Isolation::Vm),
            allow_slow_kvm: self.allow_slow_kvm,
            vm_rootfs: self.vm_rootfs,
            jail_vmm: self.jail_vmm,
            cap_vmm: self.cap_vmm,
            logging: Logging {
                file: self.log.clone(),
                format: self.log_format,
                debug: self.debug,
            },
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ListFormat {
    Table,
    Json,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create a container from a bundle; it waits for `start`.
    Create(create::CreateArgs),
    /// Run the user process of a created container.
    Start(start::StartArgs),
    /// Print the OCI state of a container.
    State(state::StateArgs),
    /// Send a signal to a container's init (or, with --all, to all its processes).
    Kill(kill::KillArgs),
    /// Release everything a container holds.
    Delete(delete::DeleteArgs),
    /// Create, start and wait for a container: from a bundle (runc style) or from an image.
    Run(run::RunArgs),
    /// Run another process in a running container.
    Exec(exec::ExecArgs),
    /// List the processes running in a container.
    Ps(ps::PsArgs),
    /// List containers.
    List(list::ListArgs),
    /// Write a starting config.json.
    Spec(spec::SpecArgs),
    /// Print container events and resource statistics.
    Events(events::EventsArgs),
    /// Report what this host can do (KVM and its speed, TUN, cgroups, tools).
    Check(check::CheckArgs),
    /// Print the OCI runtime features document (what this runtime accepts).
    Features,
    /// Run one battery of probes in a native and in a microVM container, side by side.
    Compare(crate::compare::CompareArgs),
    /// Manage local images.
    #[command(subcommand)]
    Image(image::ImageCommand),
    /// Apply new resource limits to a container.
    Update(update::UpdateArgs),
    /// Not supported: containers cannot be paused.
    Pause { id: String },
    /// Not supported: containers cannot be paused.
    Resume { id: String },
    /// Internal: the per-container monitor process that `create` starts.
    #[command(name = "__monitor", hide = true)]
    Monitor(crate::sandbox::monitor::MonitorArgs),
}

pub fn dispatch(cli: Cli) -> crate::error::Result<i32> {
    let g = cli.global.runtime_config();
    match cli.command {
        Command::Create(a) => create::run(&g, a).map(|_| 0),
        Command::Start(a) => start::run(&g, a).map(|_| 0),
        Command::State(a) => state::run(&g, a).map(|_| 0),
        Command::Kill(a) => kill::run(&g, a).map(|_| 0),
        Command::Delete(a) => delete::run(&g, a).map(|_| 0),
        Command::Run(a) => run::run(&g, a),
        Command::Exec(a) => exec::run(&g, a),
        Command::Ps(a) => ps::run(&g, a).map(|_| 0),
        Command::List(a) => list::run(&g, a).map(|_| 0),
        Command::Spec(a) => spec::run(&g, a).map(|_| 0),
        Command::Events(a) => events::run(&g, a).map(|_| 0),
        Command::Check(a) => check::run(&g, a),
        Command::Features => features::run().map(|_| 0),
        Command::Compare(a) => crate::compare::run(&g, a),
        Command::Image(c) => image::run(&g, c).map(|_| 0),
        Command::Update(a) => update::run(&g, a).map(|_| 0),
        Command::Pause { .. } | Command::Resume { .. } => Err(crate::error::Error::Usage(
            "pause and resume are not supported by this runtime".into(),
        )),
        Command::Monitor(a) => crate::sandbox::monitor::run(&g, a),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn a_runtime_config_survives_its_flags() {
        let wanted = RuntimeConfig {
            root: "/tmp/state root,with=odd".into(),
            image_store: "/tmp/images".into(),
            isolation: Isolation::Native,
            allow_slow_kvm: true,
            vm_rootfs: RootfsPath::Shared,
            jail_vmm: false,
            cap_vmm: true,
            logging: Logging {
                file: Some("/tmp/log".into()),
                format: LogFormat::Json,
                debug: true,
            },
        };
        for config in [wanted.clone(), RuntimeConfig::default()] {
            let mut argv: Vec<std::ffi::OsString> = vec!["sandbox".into()];
            argv.extend(config.to_args());
            argv.push("list".into());
            let parsed = Cli::try_parse_from(argv).unwrap().global.runtime_config();
            assert_eq!(parsed, config);
        }
    }

    #[test]
    fn the_vmm_is_jailed_uncapped_unless_told_otherwise() {
        type Field = fn(&RuntimeConfig) -> bool;
        let switches: [(&str, &str, Field, bool); 2] = [
            ("--jail-vmm", config::JAIL_VMM_ENV, |c| c.jail_vmm, true),
            ("--cap-vmm", config::CAP_VMM_ENV, |c| c.cap_vmm, false),
        ];
        for (flag, env, field, default) in switches {
            let on = |arg: Option<String>| {
                let argv = ["sandbox".to_string()]
                    .into_iter()
                    .chain(arg)
                    .chain(["list".into()]);
                Cli::try_parse_from(argv).map(|c| field(&c.global.runtime_config()))
            };
            // No variable set in this test binary's environment (scripts/test.sh sets none).
            if std::env::var_os(env).is_none() {
                assert_eq!(on(None).unwrap(), default, "{flag} by default");
            }
            assert!(on(Some(flag.into())).unwrap());
            assert!(on(Some(format!("{flag}=true"))).unwrap());
            assert!(!on(Some(format!("{flag}=false"))).unwrap());
            assert!(!on(Some(format!("{flag}=0"))).unwrap());
            assert!(on(Some(format!("{flag}=maybe"))).is_err());
        }
    }

    #[test]
    fn allow_slow_kvm_reads_its_environment_variable() {
        let cmd = Cli::command();
        let arg = cmd
            .get_arguments()
            .find(|a| a.get_id() == "allow_slow_kvm")
            .unwrap();
        assert_eq!(
            arg.get_env(),
            Some(std::ffi::OsStr::new("SANDBOX_ALLOW_SLOW_KVM"))
        );
        let g = Cli::try_parse_from(["sandbox", "--allow-slow-kvm", "check"])
            .unwrap()
            .global;
        assert!(g.allow_slow_kvm);
    }

    /// clap reads the variable from this process's environment, which tests running beside
    /// this one share: the parse happens in a child copy of this test binary instead.
    #[test]
    fn allow_slow_kvm_from_the_environment() {
        const CHILD: &str = "SANDBOX_TEST_ALLOW_SLOW_KVM_CHILD";
        if std::env::var_os(CHILD).is_some() {
            let parsed = Cli::try_parse_from(["sandbox", "check"]).map(|c| c.global.allow_slow_kvm);
            match parsed {
                Ok(allowed) => println!("allow_slow_kvm={allowed}"),
                Err(_) => println!("allow_slow_kvm=rejected"),
            }
            return;
        }
        let exe = std::env::current_exe().unwrap();
        let name = "cli::tests::allow_slow_kvm_from_the_environment";
        for (value, want) in [
            (Some("1"), "true"),
            (Some("true"), "true"),
            (Some("0"), "false"),
            (Some("false"), "false"),
            (Some("maybe"), "rejected"),
            (None, "false"),
        ] {
            let mut child = std::process::Command::new(&exe);
            child
                .args(["--exact", name, "--nocapture", "--test-threads=1"])
                .env(CHILD, "1")
                .env_remove("SANDBOX_ALLOW_SLOW_KVM");
            if let Some(v) = value {
                child.env("SANDBOX_ALLOW_SLOW_KVM", v);
            }
            let out = child.output().unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(
                stdout.contains(&format!("allow_slow_kvm={want}\n")),
                "SANDBOX_ALLOW_SLOW_KVM={value:?}: {stdout}"
            );
        }
    }
}
