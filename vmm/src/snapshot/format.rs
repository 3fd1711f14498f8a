//! The snapshot state file: a fixed header that says what the file is and which build wrote
//! it, then the state itself as JSON, guarded by its length and checksum.
//!
//! ```text
//! magic "SBXVMSNP" | format version u32 LE | build id length u16 LE | build id (UTF-8)
//! | body length u64 LE | body FNV-1a 64 u64 LE | body (JSON)
//! ```
//!
//! The header is read and checked before the body is parsed, so a file from another build is
//! refused by name rather than with whatever the JSON parser makes of it.

use std::io::{self, Read, Write};

pub const MAGIC: [u8; 8] = *b"SBXVMSNP";
/// Raised whenever the layout of the header or of the body changes incompatibly.
pub const FORMAT_VERSION: u32 = 1;
/// A body larger than this is not a snapshot of any VM this VMM makes (the guest memory is in
/// its own file): refused before anything is allocated for it.
pub const MAX_BODY_LEN: u64 = 64 << 20;
const MAX_BUILD_ID_LEN: usize = 1024;

/// What must match between the VMM that wrote a snapshot and the one restoring it. The KVM
/// structures are stored as their raw bytes, so their sizes are part of it: a kvm-bindings
/// with a different layout gives a different identity.
pub fn build_id() -> String {
    use kvm_bindings::*;
    use std::mem::size_of;
    let sizes = [
        size_of::<kvm_regs>(),
        size_of::<kvm_sregs>(),
        size_of::<kvm_xsave>(),
        size_of::<kvm_xcrs>(),
        size_of::<kvm_lapic_state>(),
        size_of::<kvm_msr_entry>(),
        size_of::<kvm_cpuid_entry2>(),
        size_of::<kvm_mp_state>(),
        size_of::<kvm_vcpu_events>(),
        size_of::<kvm_debugregs>(),
        size_of::<kvm_irqchip>(),
        size_of::<kvm_pit_state2>(),
        size_of::<kvm_clock_data>(),
    ];
    let layout = sizes
        .iter()
        .map(|s| s.to_string())
        .collect::<Vec<_>>()
        .join(".");
    format!(
        "{} {} {} kvm-layout {}",
        env!("CARGO_PKG_NAME"),
        env!("CARGO_PKG_VERSION"),
        std::env::consts::ARCH,
        layout
    )
}

#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error("not a sandbox-vmm snapshot (the file does not start with {:?})", String::from_utf8_lossy(&MAGIC))]
    BadMagic,
    #[error("snapshot format version {found}, this VMM reads only version {FORMAT_VERSION}")]
    Version { found: u32 },
    #[error("snapshot taken by build \"{found}\", this VMM is \"{expected}\"")]
    BuildId { found: String, expected: String },
    #[error("the snapshot header is damaged: {0}")]
    Header(&'static str),
    #[error("the snapshot body is {0} bytes, more than the {MAX_BODY_LEN} a snapshot can have")]
    BodyTooLarge(u64),
    #[error("the snapshot is truncated: {0}")]
    Truncated(io::Error),
    #[error("the snapshot body does not match its checksum (damaged file)")]
    Checksum,
    #[error("the snapshot body is not valid: {0}")]
    Body(serde_json::Error),
    #[error("cannot encode the snapshot: {0}")]
    Encode(serde_json::Error),
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// FNV-1a, 64-bit: catches a damaged or hand-edited body; not a defence against forgery.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Writes the header for this build, then `body` as JSON.
pub fn write<T: serde::Serialize>(out: &mut impl Write, body: &T) -> Result<(), FormatError> {
    let body = serde_json::to_vec(body).map_err(FormatError::Encode)?;
    let id = build_id();
    out.write_all(&MAGIC)?;
    out.write_all(&FORMAT_VERSION.to_le_bytes())?;
    out.write_all(&(id.len() as u16).to_le_bytes())?;
    out.write_all(id.as_bytes())?;
    out.write_all(&(body.len() as u64).to_le_bytes())?;
    out.write_all(&fnv1a64(&body).to_le_bytes())?;
    out.write_all(&body)?;
    Ok(())
}

fn read_exact(input: &mut impl Read, buf: &mut [u8]) -> Result<(), FormatError> {
    input.read_exact(buf).map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            FormatError::Truncated(e)
        } else {
            FormatError::Io(e)
        }
    })
}

fn read_array<const N: usize>(input: &mut impl Read) -> Result<[u8; N], FormatError> {
    let mut buf = [0u8; N];
    read_exact(input, &mut buf)?;
    Ok(buf)
}

/// Checks the header against this build, then parses the body.
pub fn read<T: serde::de::DeserializeOwned>(input: &mut impl Read) -> Result<T, FormatError> {
    let magic: [u8; 8] = read_array(input).map_err(|e| match e {
        FormatError::Truncated(_) => FormatError::BadMagic,
        other => other,
    })?;
    if magic != MAGIC {
        return Err(FormatError::BadMagic);
    }
    let found = u32::from_le_bytes(read_array(input)?);
    if found != FORMAT_VERSION {
        return Err(FormatError::Version { found });
    }
    let id_len = usize::from(u16::from_le_bytes(read_array(input)?));
    if id_len > MAX_BUILD_ID_LEN {
        return Err(FormatError::Header("build id too long"));
    }
    let mut id = vec![0u8; id_len];
    read_exact(input, &mut id)?;
    let id = String::from_utf8(id).map_err(|_| FormatError::Header("build id is not UTF-8"))?;
    let expected = build_id();
    if id != expected {
        return Err(FormatError::BuildId {
            found: id,
            expected,
        });
    }
    let len = u64::from_le_bytes(read_array(input)?);
    if len > MAX_BODY_LEN {
        return Err(FormatError::BodyTooLarge(len));
    }
    let checksum = u64::from_le_bytes(read_array(input)?);
    let mut body = vec![0u8; len as usize];
    read_exact(input, &mut body)?;
    if fnv1a64(&body) != checksum {
        return Err(FormatError::Checksum);
    }
    serde_json::from_slice(&body).map_err(FormatError::Body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
    struct Body {
        value: u64,
    }

    fn encoded() -> Vec<u8> {
        let mut out = Vec::new();
        write(&mut out, &Body { value: 42 }).unwrap();
        out
    }

    fn header_len() -> usize {
        8 + 4 + 2 + build_id().len() + 8 + 8
    }

    #[test]
    fn a_written_body_reads_back() {
        let bytes = encoded();
        let body: Body = read(&mut bytes.as_slice()).unwrap();
        assert_eq!(body, Body { value: 42 });
    }

    #[test]
    fn another_format_version_is_refused_by_number() {
        let mut bytes = encoded();
        bytes[8..12].copy_from_slice(&7u32.to_le_bytes());
        let err = read::<Body>(&mut bytes.as_slice()).unwrap_err();
        assert!(matches!(err, FormatError::Version { found: 7 }), "{err}");
        assert!(err.to_string().contains("version 7"), "{err}");
    }

    #[test]
    fn another_build_is_refused_naming_both() {
        let mut bytes = encoded();
        // Change one byte of the version inside the build id ("vmm 0.1.0 ..." -> "vmm 9...").
        let at = 14 + build_id().find(env!("CARGO_PKG_VERSION")).unwrap();
        bytes[at] = b'9';
        let err = read::<Body>(&mut bytes.as_slice()).unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, FormatError::BuildId { .. }), "{text}");
        assert!(text.contains(&build_id()), "{text}");
    }

    #[test]
    fn other_files_and_damage_are_refused() {
        let err = read::<Body>(&mut b"\x7fELF\x02\x01\x01\x00rest".as_slice()).unwrap_err();
        assert!(matches!(err, FormatError::BadMagic), "{err}");
        let err = read::<Body>(&mut b"SBX".as_slice()).unwrap_err();
        assert!(matches!(err, FormatError::BadMagic), "{err}");

        let bytes = encoded();
        let cut = &bytes[..bytes.len() - 3];
        let err = read::<Body>(&mut &cut[..]).unwrap_err();
        assert!(matches!(err, FormatError::Truncated(_)), "{err}");

        let mut flipped = bytes.clone();
        let last = flipped.len() - 2;
        flipped[last] ^= 1;
        let err = read::<Body>(&mut flipped.as_slice()).unwrap_err();
        assert!(matches!(err, FormatError::Checksum), "{err}");

        let mut huge = bytes.clone();
        let at = header_len() - 16;
        huge[at..at + 8].copy_from_slice(&u64::MAX.to_le_bytes());
        let err = read::<Body>(&mut huge.as_slice()).unwrap_err();
        assert!(matches!(err, FormatError::BodyTooLarge(_)), "{err}");
    }
}
