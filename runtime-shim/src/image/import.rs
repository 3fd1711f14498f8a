//! `sandbox image import FILE`: OCI image layout tarballs and `docker save` archives. Layers
//! are applied in order; `.wh.NAME` deletes NAME from the layers below and `.wh..wh..opq`
//! empties its directory of them (the OCI image spec's whiteouts).

use std::fs;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Component, Path, PathBuf};

use serde_json::Value;

use crate::error::{Error, IoContext, Result};
use crate::image::disk::progress;
use crate::image::store::remove_tree;
use crate::image::{ImageConfig, ImageStore};

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE_MARKER: &str = ".wh..wh..opq";

pub fn import(store: &ImageStore, file: &Path, name: Option<&str>) -> Result<ImageConfig> {
    let size = fs::metadata(file).ctx("open", file)?.len();
    progress(&format!(
        "importing {} ({:.1} MiB)",
        file.display(),
        size as f64 / (1 << 20) as f64
    ));
    let work = store.root().join(format!(".import-{}", std::process::id()));
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work).ctx("create", &work)?;
    let result = import_in(store, file, name, &work);
    let _ = fs::remove_dir_all(&work);
    result
}

fn import_in(
    store: &ImageStore,
    file: &Path,
    name: Option<&str>,
    work: &Path,
) -> Result<ImageConfig> {
    // The outer archive holds only small JSON files and layer blobs; unpack it as plain files.
    let f = fs::File::open(file).ctx("open", file)?;
    let mut archive = tar::Archive::new(maybe_gzip(f, file)?);
    for entry in archive
        .entries()
        .map_err(|e| Error::Image(format!("{}: not a tar archive: {e}", file.display())))?
    {
        let mut entry =
            entry.map_err(|e| Error::Image(format!("{}: bad tar entry: {e}", file.display())))?;
        entry
            .unpack_in(work)
            .map_err(|e| Error::Image(format!("{}: cannot unpack: {e}", file.display())))?;
    }

    let (layers, config, tag) = if work.join("index.json").is_file() {
        read_oci_layout(work)?
    } else if work.join("manifest.json").is_file() {
        read_docker_archive(work)?
    } else {
        return Err(Error::Image(format!(
            "{}: neither an OCI image layout (index.json) nor a docker save archive (manifest.json)",
            file.display()
        )));
    };
    let name = match (name, tag) {
        (Some(n), _) => n.to_string(),
        (None, Some(t)) => t,
        (None, None) => {
            return Err(Error::Image(
                "the archive names no image; pass --name".into(),
            ))
        }
    };
    crate::image::store::validate_name(&name)?;

    let staging = store.staging(&name)?;
    let rootfs = staging.join("rootfs");
    let total = layers.len();
    for (i, layer) in layers.iter().enumerate() {
        let size = fs::metadata(layer).map(|m| m.len()).unwrap_or(0);
        progress(&format!(
            "layer {}/{total}: {:.1} MiB",
            i + 1,
            size as f64 / (1 << 20) as f64
        ));
        if let Err(e) = apply_layer(layer, &rootfs) {
            let _ = remove_tree(&staging);
            return Err(e);
        }
    }
    let cfg = image_config(&name, &config, file);
    store.commit(&staging, &cfg)?;
    progress(&format!("imported {name}"));
    Ok(cfg)
}

fn maybe_gzip(mut f: fs::File, path: &Path) -> Result<Box<dyn Read>> {
    let mut magic = [0u8; 2];
    let n = f.read(&mut magic).ctx("read", path)?;
    f.seek(SeekFrom::Start(0)).ctx("seek", path)?;
    if n == 2 && magic == [0x1f, 0x8b] {
        Ok(Box::new(flate2::read::GzDecoder::new(BufReader::new(f))))
    } else {
        Ok(Box::new(BufReader::new(f)))
    }
}

fn read_json(path: &Path) -> Result<Value> {
    let text = fs::read(path).ctx("read", path)?;
    serde_json::from_slice(&text).map_err(|e| Error::Image(format!("{}: {e}", path.display())))
}

/// Resolves `sha256:HEX` to `blobs/sha256/HEX` inside the layout, refusing anything else.
fn blob(root: &Path, digest: &str) -> Result<PathBuf> {
    let (alg, hex) = digest
        .split_once(':')
        .ok_or_else(|| Error::Image(format!("bad digest {digest:?}")))?;
    if !alg.chars().all(|c| c.is_ascii_alphanumeric())
        || hex.is_empty()
        || !hex.chars().all(|c| c.is_ascii_hexdigit())
    {
        return Err(Error::Image(format!("bad digest {digest:?}")));
    }
    let p = root.join("blobs").join(alg).join(hex);
    if !p.is_file() {
        return Err(Error::Image(format!(
            "blob {digest} is missing from the archive"
        )));
    }
    Ok(p)
}

/// A path named inside the archive, refused if it would leave it.
fn inside(root: &Path, rel: &str) -> Result<PathBuf> {
    let p = Path::new(rel);
    if p.components()
        .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return Err(Error::Image(format!(
            "archive path {rel:?} leaves the archive"
        )));
    }
    Ok(root.join(p))
}

type Parsed = (Vec<PathBuf>, Value, Option<String>);

fn read_oci_layout(root: &Path) -> Result<Parsed> {
    let index = read_json(&root.join("index.json"))?;
    let manifests = index["manifests"]
        .as_array()
        .filter(|m| !m.is_empty())
        .ok_or_else(|| Error::Image("index.json lists no manifests".into()))?;
    let desc = &manifests[0];
    let tag = desc["annotations"]["io.containerd.image.name"]
        .as_str()
        .or_else(|| desc["annotations"]["org.opencontainers.image.ref.name"].as_str())
        .map(str::to_string);
    let mut manifest = read_json(&blob(root, desc["digest"].as_str().unwrap_or(""))?)?;
    // A multi-platform index: take the linux/amd64 manifest.
    if manifest["manifests"].is_array() {
        let pick = manifest["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["platform"]["os"] == "linux" && m["platform"]["architecture"] == "amd64")
            .cloned()
            .ok_or_else(|| Error::Image("the image index has no linux/amd64 manifest".into()))?;
        manifest = read_json(&blob(root, pick["digest"].as_str().unwrap_or(""))?)?;
    }
    let config = read_json(&blob(
        root,
        manifest["config"]["digest"].as_str().unwrap_or(""),
    )?)?;
    let layers = manifest["layers"]
        .as_array()
        .ok_or_else(|| Error::Image("manifest has no layers".into()))?
        .iter()
        .map(|l| blob(root, l["digest"].as_str().unwrap_or("")))
        .collect::<Result<Vec<_>>>()?;
    Ok((layers, config, tag))
}

fn read_docker_archive(root: &Path) -> Result<Parsed> {
    let manifest = read_json(&root.join("manifest.json"))?;
    let first = manifest
        .as_array()
        .and_then(|a| a.first())
        .ok_or_else(|| Error::Image("manifest.json lists no images".into()))?;
    let config = read_json(&inside(root, first["Config"].as_str().unwrap_or(""))?)?;
    let layers = first["Layers"]
        .as_array()
        .ok_or_else(|| Error::Image("manifest.json entry has no Layers".into()))?
        .iter()
        .map(|l| inside(root, l.as_str().unwrap_or("")))
        .collect::<Result<Vec<_>>>()?;
    let tag = first["RepoTags"]
        .as_array()
        .and_then(|t| t.first())
        .and_then(|t| t.as_str())
        .map(str::to_string);
    Ok((layers, config, tag))
}

fn image_config(name: &str, config: &Value, file: &Path) -> ImageConfig {
    let c = &config["config"];
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    ImageConfig {
        name: name.to_string(),
        entrypoint: strings(&c["Entrypoint"]),
        cmd: strings(&c["Cmd"]),
        env: strings(&c["Env"]),
        working_dir: c["WorkingDir"].as_str().unwrap_or("").to_string(),
        user: c["User"].as_str().unwrap_or("").to_string(),
        source: file.display().to_string(),
        created: crate::timefmt::now_rfc3339(),
    }
}

/// Applies one layer: first its whiteouts (which only ever hide lower layers), then its files.
pub fn apply_layer(layer: &Path, rootfs: &Path) -> Result<()> {
    let open = || -> Result<tar::Archive<Box<dyn Read>>> {
        let f = fs::File::open(layer).ctx("open layer", layer)?;
        Ok(tar::Archive::new(maybe_gzip(f, layer)?))
    };
    let bad = |e: std::io::Error| {
        let cause = std::error::Error::source(&e)
            .map(|s| format!(": {s}"))
            .unwrap_or_default();
        Error::Image(format!("layer {}: {e}{cause}", layer.display()))
    };

    let mut archive = open()?;
    for entry in archive.entries().map_err(bad)? {
        let entry = entry.map_err(bad)?;
        let path = entry.path().map_err(bad)?.into_owned();
        let Some(base) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if !base.starts_with(WHITEOUT_PREFIX) {
            continue;
        }
        let parent = safe_join(rootfs, path.parent().unwrap_or(Path::new("")))?;
        if base == OPAQUE_MARKER {
            if let Ok(rd) = fs::read_dir(&parent) {
                for e in rd.flatten() {
                    remove_any(&e.path())?;
                }
            }
        } else {
            let victim = parent.join(&base[WHITEOUT_PREFIX.len()..]);
            remove_any(&victim)?;
        }
    }

    let mut archive = open()?;
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(true);
    archive.set_preserve_mtime(true);
    archive.set_overwrite(true);
    archive.set_unpack_xattrs(false);
    for entry in archive.entries().map_err(bad)? {
        let mut entry = entry.map_err(bad)?;
        let path = entry.path().map_err(bad)?.into_owned();
        if path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with(WHITEOUT_PREFIX))
        {
            continue;
        }
        // A file replacing a directory (or the reverse) from a lower layer.
        let target = safe_join(rootfs, &path)?;
        if let Ok(m) = target.symlink_metadata() {
            let is_dir_entry = entry.header().entry_type().is_dir();
            if m.is_dir() != is_dir_entry || m.file_type().is_symlink() {
                remove_any(&target)?;
            }
        }
        entry.unpack_in(rootfs).map_err(bad)?;
    }
    Ok(())
}

/// Joins an archive path under the rootfs, refusing `..` and absolute escapes.
fn safe_join(root: &Path, rel: &Path) -> Result<PathBuf> {
    let mut out = root.to_path_buf();
    for c in rel.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir | Component::RootDir => {}
            _ => {
                return Err(Error::Image(format!(
                    "layer path {} leaves the rootfs",
                    rel.display()
                )))
            }
        }
    }
    Ok(out)
}

fn remove_any(p: &Path) -> Result<()> {
    match p.symlink_metadata() {
        Ok(m) if m.is_dir() => fs::remove_dir_all(p).ctx("remove", p),
        Ok(_) => fs::remove_file(p).ctx("remove", p),
        Err(_) => Ok(()),
    }
}
