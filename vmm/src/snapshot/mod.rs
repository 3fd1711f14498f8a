//! VM snapshots: the state of a paused VM written to two files, and read back to build a VM
//! that carries on from it.
//!
//! - `format`: the state file's header (magic, format version, build identity) and body.
//! - `vcpu`, `vm`: what the vCPU and VM-wide KVM state is made of.
//! - `memory`: guest RAM in its own file, sparse, mapped MAP_PRIVATE on restore.
//!
//! Reading and writing the KVM state is done by `vstate` (`Vcpu::save_state`,
//! `Vm::save_state` and their `restore_state`); the builder pauses the VM, gathers the parts
//! and calls `write`, and `VmmBuilder::from_snapshot` calls `read` and restores them in order.

pub mod format;
pub mod memory;
pub mod vcpu;
pub mod vm;

use std::fs::File;
use std::io::{BufReader, BufWriter};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::device_manager::LegacyDevicesState;
use crate::vstate::memory::GuestMemory;
use format::FormatError;
use memory::{MemoryFileError, MemoryState};
use vcpu::VcpuState;
use vm::VmState;

/// Where a snapshot is: the state file (small) and the guest memory file (the size of RAM,
/// sparse).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotFiles {
    pub state: PathBuf,
    pub memory: PathBuf,
}

impl SnapshotFiles {
    /// `DIR/state` and `DIR/memory`.
    pub fn in_dir(dir: &Path) -> Self {
        SnapshotFiles {
            state: dir.join("state"),
            memory: dir.join("memory"),
        }
    }
}

/// The machine the snapshot was taken of: a restore must be asked for the same.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct MachineState {
    pub vcpus: u8,
    pub mem_mib: u64,
}

/// Everything in the state file's body.
#[derive(Serialize, Deserialize)]
pub struct SnapshotState {
    pub machine: MachineState,
    pub memory: MemoryState,
    pub vm: VmState,
    /// In vCPU id order.
    pub vcpus: Vec<VcpuState>,
    pub legacy_devices: LegacyDevicesState,
}

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("snapshot state file {path}: {source}")]
    StateFile { path: PathBuf, source: FormatError },
    #[error(transparent)]
    MemoryFile(#[from] MemoryFileError),
    #[error("the snapshot is of a VM with {found:?}, but {requested:?} was asked for")]
    MachineMismatch {
        found: MachineState,
        requested: MachineState,
    },
    #[error("the snapshot holds {found} vCPU states for {vcpus} vCPUs (or not in id order)")]
    VcpuStates { found: usize, vcpus: u8 },
    #[error("the VM has virtio devices ({0}), whose state snapshots do not hold yet")]
    VirtioDevices(String),
    #[error("the VM is not paused: pause it before taking a snapshot")]
    NotPaused,
    #[error("the VM is not running (its vCPU threads have ended)")]
    NotRunning,
    #[error("vCPU {vcpu} did not leave KVM_RUN within {timeout_ms} ms")]
    PauseTimeout { vcpu: u8, timeout_ms: u128 },
    #[error("vCPU {vcpu} state: {source}")]
    Vcpu {
        vcpu: u8,
        source: crate::vstate::vcpu::VcpuError,
    },
    #[error("VM state: {0}")]
    Vm(#[from] crate::vstate::vm::VmError),
    #[error("KVM_GET_MSR_INDEX_LIST failed: {0}")]
    MsrIndexList(kvm_ioctls::Error),
}

fn state_file_error(path: &Path) -> impl Fn(FormatError) -> SnapshotError + '_ {
    move |source| SnapshotError::StateFile {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes guest memory to `files.memory`, then the state (which records the memory layout)
/// to `files.state`. The state file is written under a temporary name and renamed, so a
/// state file that exists is whole. The vCPUs must be paused.
pub fn write(
    files: &SnapshotFiles,
    mem: &GuestMemory,
    machine: MachineState,
    vm: VmState,
    vcpus: Vec<VcpuState>,
    legacy_devices: LegacyDevicesState,
) -> Result<(), SnapshotError> {
    let memory = memory::save(mem, &files.memory)?;
    let state = SnapshotState {
        machine,
        memory,
        vm,
        vcpus,
        legacy_devices,
    };
    let path = &files.state;
    let err = state_file_error(path);
    let mut tmp = path.clone().into_os_string();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let file = File::create(&tmp).map_err(|e| err(e.into()))?;
    let mut out = BufWriter::new(file);
    format::write(&mut out, &state).map_err(&err)?;
    let file = out.into_inner().map_err(|e| err(e.into_error().into()))?;
    file.sync_all().map_err(|e| err(e.into()))?;
    std::fs::rename(&tmp, path).map_err(|e| err(e.into()))?;
    Ok(())
}

/// Reads and checks the state file: header, build, and that it describes `requested`.
pub fn read(
    files: &SnapshotFiles,
    requested: &MachineState,
) -> Result<SnapshotState, SnapshotError> {
    let path = &files.state;
    let err = state_file_error(path);
    let file = File::open(path).map_err(|e| err(e.into()))?;
    let state: SnapshotState = format::read(&mut BufReader::new(file)).map_err(&err)?;
    if state.machine != *requested {
        return Err(SnapshotError::MachineMismatch {
            found: state.machine,
            requested: requested.clone(),
        });
    }
    let ids_in_order = state
        .vcpus
        .iter()
        .enumerate()
        .all(|(i, v)| usize::from(v.id) == i);
    if state.vcpus.len() != usize::from(requested.vcpus) || !ids_in_order {
        return Err(SnapshotError::VcpuStates {
            found: state.vcpus.len(),
            vcpus: requested.vcpus,
        });
    }
    Ok(state)
}
