//! A busybox image made here from Debian's busybox-static, in the two archive formats the
//! clients import: an OCI image layout (`ctr images import`) and a `docker save` archive
//! (`docker load`).

use std::path::Path;

use sha2::{Digest, Sha256};

pub const BUSYBOX: &str = "/bin/busybox";
const APPLETS: &[&str] = &[
    "sh", "echo", "cat", "sleep", "true", "false", "ls", "ps", "id", "hostname", "wc", "head",
];

pub fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The single layer: /bin/busybox with links for a few applets, the usual empty dirs, and
/// /etc/image-name holding `name`, so that a container shows which image it runs.
fn layer(name: &str) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for dir in ["bin", "tmp", "proc", "sys", "dev", "etc", "root"] {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(if dir == "tmp" { 0o1777 } else { 0o755 });
        h.set_size(0);
        h.set_mtime(0);
        b.append_data(&mut h, format!("{dir}/"), std::io::empty())
            .unwrap();
    }
    let data = std::fs::read(BUSYBOX).expect("busybox-static installed");
    let mut h = tar::Header::new_gnu();
    h.set_mode(0o755);
    h.set_size(data.len() as u64);
    h.set_mtime(0);
    b.append_data(&mut h, "bin/busybox", &data[..]).unwrap();
    for a in APPLETS {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_mode(0o777);
        h.set_size(0);
        h.set_mtime(0);
        b.append_link(&mut h, format!("bin/{a}"), "busybox")
            .unwrap();
    }
    let mut h = tar::Header::new_gnu();
    h.set_mode(0o644);
    h.set_size(name.len() as u64 + 1);
    h.set_mtime(0);
    b.append_data(&mut h, "etc/image-name", format!("{name}\n").as_bytes())
        .unwrap();
    b.into_inner().unwrap()
}

fn config(layer_digest: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Env": ["PATH=/bin"],
            "Cmd": ["sh"],
            "WorkingDir": "/"
        },
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
        "history": [{"created_by": "sandbox tests"}]
    }))
    .unwrap()
}

fn add_file(b: &mut tar::Builder<std::fs::File>, path: &str, data: &[u8]) {
    let mut h = tar::Header::new_gnu();
    h.set_mode(0o644);
    h.set_size(data.len() as u64);
    h.set_mtime(0);
    b.append_data(&mut h, path, data).unwrap();
}

/// Writes an OCI image layout archive whose image is named `name` (a full reference such as
/// `docker.io/library/busybox:sandbox-test`).
pub fn write_oci_archive(path: &Path, name: &str) {
    let layer = layer(name);
    let layer_digest = format!("sha256:{}", sha256_hex(&layer));
    let config = config(&layer_digest);
    let config_digest = format!("sha256:{}", sha256_hex(&config));
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": config_digest, "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": layer_digest, "size": layer.len()}]
    }))
    .unwrap();
    let manifest_digest = format!("sha256:{}", sha256_hex(&manifest));
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest, "size": manifest.len(),
            "platform": {"architecture": "amd64", "os": "linux"},
            "annotations": {"io.containerd.image.name": name,
                            "org.opencontainers.image.ref.name": name.rsplit(':').next().unwrap()}
        }]
    }))
    .unwrap();
    let mut b = tar::Builder::new(std::fs::File::create(path).unwrap());
    add_file(&mut b, "oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#);
    add_file(&mut b, "index.json", &index);
    for (digest, data) in [
        (&layer_digest, &layer),
        (&config_digest, &config),
        (&manifest_digest, &manifest),
    ] {
        let hex = digest.trim_start_matches("sha256:");
        add_file(&mut b, &format!("blobs/sha256/{hex}"), data);
    }
    b.finish().unwrap();
}

/// Writes a `docker save` archive of the image tagged `tag` (e.g. `busybox:sandbox-test`).
pub fn write_docker_archive(path: &Path, tag: &str) {
    let layer = layer(tag);
    let layer_digest = format!("sha256:{}", sha256_hex(&layer));
    let config = config(&layer_digest);
    let config_hex = sha256_hex(&config);
    let layer_hex = sha256_hex(&layer);
    let manifest = serde_json::to_vec(&serde_json::json!([{
        "Config": format!("{config_hex}.json"),
        "RepoTags": [tag],
        "Layers": [format!("{layer_hex}/layer.tar")]
    }]))
    .unwrap();
    let mut b = tar::Builder::new(std::fs::File::create(path).unwrap());
    add_file(&mut b, "manifest.json", &manifest);
    add_file(&mut b, &format!("{config_hex}.json"), &config);
    add_file(&mut b, &format!("{layer_hex}/layer.tar"), &layer);
    b.finish().unwrap();
}
