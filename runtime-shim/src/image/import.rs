//! `sandbox image import FILE`: OCI image layouts and `docker save` archives.
//!
//! The outer archive is read as data: its regular files are copied into a private work
//! directory under numbered names (with each one's sha256 taken on the way), its symlinks and
//! hard links become aliases between archive names, and nothing in it is ever created by the
//! name it carries. The image is then read with the OCI image types (`oci-spec`): every blob
//! is checked against its descriptor's digest and size before it is used, and each layer's
//! uncompressed stream against the config's `diff_ids` while it is applied. Layers (plain
//! tar, gzip or zstd) are applied in order by [`super::layer`], confined to a staging rootfs
//! that is renamed into the store only once the whole image checked out; any failure removes
//! the staging directory, so nothing half imported is left behind.

use std::collections::HashMap;
use std::fs;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use agent::confined::ConfinedRoot;
use oci_spec::image::{
    Arch, Descriptor, Digest, DigestAlgorithm, ImageConfiguration, ImageIndex, ImageManifest,
    MediaType, Os,
};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use sha2::{Sha256, Sha512};

use crate::error::{Error, IoContext, Result};
use crate::image::disk::progress;
use crate::image::layer::{self, clean_name};
use crate::image::store::remove_tree;
use crate::image::tree_hash::hex;
use crate::image::{ImageConfig, ImageStore};

/// Largest JSON document (index, manifest, config) read into memory.
const MAX_JSON_LEN: u64 = 16 << 20;
/// Most aliases followed to find one archive name's file (older `docker save` links repeated
/// layers to the first copy).
const MAX_ALIAS_HOPS: usize = 8;
/// Most nested indexes followed from index.json to a manifest.
const MAX_INDEX_DEPTH: usize = 4;

pub fn import(store: &ImageStore, file: &Path, name: Option<&str>) -> Result<ImageConfig> {
    let size = fs::metadata(file).ctx("open", file)?.len();
    progress(&format!(
        "importing {} ({:.1} MiB)",
        file.display(),
        size as f64 / (1 << 20) as f64
    ));
    fs::create_dir_all(store.root()).ctx("create image store", store.root())?;
    let work = store.root().join(format!(".import-{}", std::process::id()));
    let _ = remove_tree(&work);
    fs::DirBuilder::new()
        .mode(0o700)
        .create(&work)
        .ctx("create", &work)?;
    let result = import_in(store, file, name, &work);
    let _ = remove_tree(&work);
    result
}

fn import_in(
    store: &ImageStore,
    file: &Path,
    name: Option<&str>,
    work: &Path,
) -> Result<ImageConfig> {
    let archive = OuterArchive::unpack(file, work)?;
    let image = if archive.has("index.json") {
        archive.read_oci_layout()?
    } else if archive.has("manifest.json") {
        archive.read_docker_archive()?
    } else {
        return Err(Error::Image(format!(
            "{}: neither an OCI image layout (index.json) nor a docker save archive (manifest.json)",
            file.display()
        )));
    };
    let name = match (name, &image.tag) {
        (Some(n), _) => n.to_string(),
        (None, Some(t)) => t.clone(),
        (None, None) => {
            return Err(Error::Image(
                "the archive names no image; pass --name".into(),
            ))
        }
    };
    crate::image::store::validate_name(&name)?;

    let staging = store.staging(&name)?;
    let applied = apply_layers(&image.layers, &staging.join("rootfs"));
    if let Err(e) = applied {
        let _ = remove_tree(&staging);
        return Err(e);
    }
    let cfg = image_config(&name, &image.config, file);
    let cfg = store.commit(&staging, &cfg).inspect_err(|_| {
        let _ = remove_tree(&staging);
    })?;
    progress(&format!("imported {name}"));
    Ok(cfg)
}

fn apply_layers(layers: &[Layer], rootfs: &Path) -> Result<()> {
    let root = ConfinedRoot::open(rootfs).ctx("open the staging rootfs", rootfs)?;
    let total = layers.len();
    for (i, layer) in layers.iter().enumerate() {
        let what = format!("layer {}/{total} ({})", i + 1, layer.label);
        progress(&format!(
            "{what}: {:.1} MiB",
            layer.blob.size as f64 / (1 << 20) as f64
        ));
        let f = fs::File::open(&layer.blob.path).ctx("open layer", &layer.blob.path)?;
        let stream = decompress(BufReader::new(f), layer.media_type.as_ref())
            .map_err(|e| Error::Image(format!("{what}: {e}")))?;
        let mut hashed = DigestReader::new(stream, &layer.diff_id)
            .map_err(|e| Error::Image(format!("{what}: diff_id {}: {e}", layer.diff_id)))?;
        let applied =
            layer::apply(&mut hashed, &root).map_err(|e| Error::Image(format!("{what}: {e}")))?;
        // The tar reader stops at the end-of-archive blocks; the digest covers the stream.
        io::copy(&mut hashed, &mut io::sink())
            .map_err(|e| Error::Image(format!("{what}: read to the end: {e}")))?;
        let got = hashed.finish();
        if got != layer.diff_id.to_string() {
            return Err(Error::Image(format!(
                "{what}: its uncompressed content has digest {got}, but the image config's diff_id is {}",
                layer.diff_id
            )));
        }
        for dev in &applied.skipped_devices {
            progress(&format!("{what}: device node /{} skipped", dev.display()));
        }
    }
    Ok(())
}

/// A layer ready to apply: its checked blob, how it is compressed and what it must hash to
/// uncompressed.
struct Layer {
    /// The blob's digest or archive name, for messages.
    label: String,
    blob: Blob,
    media_type: Option<MediaType>,
    diff_id: Digest,
}

struct Image {
    layers: Vec<Layer>,
    config: ImageConfiguration,
    tag: Option<String>,
}

/// A regular file of the outer archive, copied into the work directory.
#[derive(Clone, Debug)]
struct Blob {
    path: PathBuf,
    size: u64,
    sha256: String,
}

/// The outer archive's files by the names it gives them.
struct OuterArchive {
    source: PathBuf,
    files: HashMap<PathBuf, Blob>,
}

impl OuterArchive {
    fn unpack(file: &Path, work: &Path) -> Result<Self> {
        let bad = |e: io::Error| Error::Image(format!("{}: {e}", file.display()));
        let f = fs::File::open(file).ctx("open", file)?;
        let stream = decompress(BufReader::new(f), None).map_err(bad)?;
        let mut archive = tar::Archive::new(stream);
        let mut files = HashMap::new();
        let mut aliases: Vec<(PathBuf, PathBuf)> = Vec::new();
        for (n, entry) in archive
            .entries()
            .map_err(|e| Error::Image(format!("{}: not a tar archive: {e}", file.display())))?
            .enumerate()
        {
            let mut entry = entry
                .map_err(|e| Error::Image(format!("{}: bad tar entry: {e}", file.display())))?;
            let raw = entry.path().map_err(bad)?.into_owned();
            let name = clean_name(&raw)
                .map_err(|e| Error::Image(format!("{}: entry {e}", file.display())))?;
            match entry.header().entry_type() {
                tar::EntryType::Regular | tar::EntryType::Continuous => {
                    let path = work.join(format!("blob-{n}"));
                    let (size, sha256) = copy_hashing(&mut entry, &path).map_err(|e| {
                        Error::Image(format!("{}: {}: {e}", file.display(), raw.display()))
                    })?;
                    files.insert(name, Blob { path, size, sha256 });
                }
                tar::EntryType::Symlink | tar::EntryType::Link => {
                    let is_symlink = entry.header().entry_type().is_symlink();
                    let target = entry.link_name().map_err(bad)?.ok_or_else(|| {
                        Error::Image(format!(
                            "{}: {}: link without a target",
                            file.display(),
                            raw.display()
                        ))
                    })?;
                    // A symlink is relative to its own directory, a hard link to the archive.
                    let target = if is_symlink && target.is_relative() {
                        name.parent().unwrap_or(Path::new("")).join(target)
                    } else {
                        target.into_owned()
                    };
                    let target = clean_name(&target).map_err(|e| {
                        Error::Image(format!("{}: link {}: {e}", file.display(), raw.display()))
                    })?;
                    aliases.push((name, target));
                }
                _ => {}
            }
        }
        let alias_of: HashMap<PathBuf, PathBuf> = aliases.into_iter().collect();
        for name in alias_of.keys() {
            let mut at = name;
            for _ in 0..MAX_ALIAS_HOPS {
                match alias_of.get(at) {
                    Some(next) => at = next,
                    None => break,
                }
            }
            if let Some(blob) = files.get(at).cloned() {
                files.insert(name.clone(), blob);
            }
        }
        Ok(OuterArchive {
            source: file.to_path_buf(),
            files,
        })
    }

    fn has(&self, name: &str) -> bool {
        self.files.contains_key(Path::new(name))
    }

    fn by_name(&self, name: &str, what: &str) -> Result<&Blob> {
        let key = clean_name(Path::new(name)).map_err(|e| Error::Image(format!("{what}: {e}")))?;
        self.files.get(&key).ok_or_else(|| {
            Error::Image(format!(
                "{what} {name:?} is missing from {}",
                self.source.display()
            ))
        })
    }

    /// The blob a descriptor names, checked against its digest and size.
    fn by_descriptor(&self, desc: &Descriptor, what: &str) -> Result<&Blob> {
        let digest = desc.digest();
        let blob = self.by_name(
            &format!("blobs/{}/{}", digest.algorithm(), digest.digest()),
            &format!("{what} blob {digest}"),
        )?;
        if blob.size != desc.size() {
            return Err(Error::Image(format!(
                "{what} blob {digest} is {} bytes, but its descriptor says {}",
                blob.size,
                desc.size()
            )));
        }
        check_digest(blob, digest, &format!("{what} blob"))?;
        Ok(blob)
    }

    fn json<T: DeserializeOwned>(&self, blob: &Blob, what: &str) -> Result<T> {
        if blob.size > MAX_JSON_LEN {
            return Err(Error::Image(format!(
                "{what} is {} bytes, more than the {MAX_JSON_LEN} read for a JSON document",
                blob.size
            )));
        }
        let text = fs::read(&blob.path).ctx("read", &blob.path)?;
        let de = &mut serde_json::Deserializer::from_slice(&text);
        serde_path_to_error::deserialize(de).map_err(|e| Error::Image(format!("{what}: {e}")))
    }

    fn read_oci_layout(&self) -> Result<Image> {
        let index: ImageIndex =
            self.json(self.by_name("index.json", "index.json")?, "index.json")?;
        let mut desc = pick_manifest(index.manifests(), "index.json")?.clone();
        let tag = desc.annotations().as_ref().and_then(|a| {
            a.get("io.containerd.image.name")
                .or_else(|| a.get("org.opencontainers.image.ref.name"))
                .cloned()
        });
        let mut depth = 0;
        let manifest: ImageManifest = loop {
            let what = format!("manifest {}", desc.digest());
            let blob = self.by_descriptor(&desc, "manifest")?;
            if !is_index(desc.media_type()) {
                break self.json(blob, &what)?;
            }
            depth += 1;
            if depth > MAX_INDEX_DEPTH {
                return Err(Error::Image(format!(
                    "{what}: more than {MAX_INDEX_DEPTH} nested image indexes"
                )));
            }
            let nested: ImageIndex = self.json(blob, &what)?;
            desc = pick_manifest(nested.manifests(), &what)?.clone();
        };
        let config_blob = self.by_descriptor(manifest.config(), "config")?;
        let config: ImageConfiguration = self.json(
            config_blob,
            &format!("config {}", manifest.config().digest()),
        )?;
        let mut layers = Vec::new();
        let diff_ids = diff_ids(&config, manifest.layers().len())?;
        for (desc, diff_id) in manifest.layers().iter().zip(diff_ids) {
            layers.push(Layer {
                label: desc.digest().to_string(),
                blob: self.by_descriptor(desc, "layer")?.clone(),
                media_type: Some(desc.media_type().clone()),
                diff_id,
            });
        }
        Ok(Image {
            layers,
            config,
            tag,
        })
    }

    fn read_docker_archive(&self) -> Result<Image> {
        let entries: Vec<DockerManifest> = self.json(
            self.by_name("manifest.json", "manifest.json")?,
            "manifest.json",
        )?;
        let first = entries
            .first()
            .ok_or_else(|| Error::Image("manifest.json lists no images".into()))?;
        let config_blob = self.by_name(&first.config, "config")?;
        // The config's name is its digest (`<hex>.json` or `blobs/sha256/<hex>`).
        if let Some(digest) = digest_in_name(&first.config) {
            check_digest(config_blob, &digest, "config")?;
        }
        let config: ImageConfiguration =
            self.json(config_blob, &format!("config {}", first.config))?;
        let diff_ids = diff_ids(&config, first.layers.len())?;
        let mut layers = Vec::new();
        for (name, diff_id) in first.layers.iter().zip(diff_ids) {
            let blob = self.by_name(name, "layer")?.clone();
            // The newer layout names layers by the digest of their (uncompressed) blob.
            if let Some(digest) = digest_in_name(name) {
                check_digest(&blob, &digest, "layer")?;
            }
            layers.push(Layer {
                label: name.clone(),
                blob,
                media_type: None,
                diff_id,
            });
        }
        Ok(Image {
            layers,
            config,
            tag: first.repo_tags.first().cloned(),
        })
    }
}

/// One image of a `docker save` manifest.json (Docker's format, not an OCI type).
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerManifest {
    config: String,
    #[serde(default)]
    repo_tags: Vec<String>,
    layers: Vec<String>,
}

/// The config's diff_ids as digests, one for each of the manifest's `layers` layers.
fn diff_ids(config: &ImageConfiguration, layers: usize) -> Result<Vec<Digest>> {
    let ids = config.rootfs().diff_ids();
    if ids.len() != layers {
        return Err(Error::Image(format!(
            "the manifest lists {layers} layers but the image config has {} diff_ids",
            ids.len()
        )));
    }
    ids.iter()
        .map(|s| Digest::from_str(s).map_err(|e| Error::Image(format!("diff_id {s:?}: {e}"))))
        .collect()
}

fn is_index(media_type: &MediaType) -> bool {
    match media_type {
        MediaType::ImageIndex => true,
        MediaType::Other(s) => s == "application/vnd.docker.distribution.manifest.list.v2+json",
        _ => false,
    }
}

/// The manifest to import from an index: the only one, the linux/amd64 one, or (where no
/// entry names a platform, as in a layout holding several tags of one image) the first.
fn pick_manifest<'a>(manifests: &'a [Descriptor], what: &str) -> Result<&'a Descriptor> {
    match manifests {
        [] => Err(Error::Image(format!("{what} lists no manifests"))),
        [only] => Ok(only),
        many => many
            .iter()
            .find(|d| {
                d.platform()
                    .as_ref()
                    .is_some_and(|p| *p.os() == Os::Linux && *p.architecture() == Arch::Amd64)
            })
            .or_else(|| {
                many.iter()
                    .all(|d| d.platform().is_none())
                    .then(|| &many[0])
            })
            .ok_or_else(|| Error::Image(format!("{what} has no linux/amd64 manifest"))),
    }
}

/// `sha256:HEX` from a docker archive name `HEX.json` or `blobs/sha256/HEX`, where HEX is a
/// full sha256 (the old layout's `ID/layer.tar` directories are not content digests).
fn digest_in_name(name: &str) -> Option<Digest> {
    let hex = name
        .strip_prefix("blobs/sha256/")
        .or_else(|| name.strip_suffix(".json"))?;
    (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| Digest::from_str(&format!("sha256:{}", hex.to_ascii_lowercase())).ok())
        .flatten()
}

fn check_digest(blob: &Blob, digest: &Digest, what: &str) -> Result<()> {
    let got = match digest.algorithm() {
        DigestAlgorithm::Sha256 => format!("sha256:{}", blob.sha256),
        _ => {
            let f = fs::File::open(&blob.path).ctx("read", &blob.path)?;
            let mut r = DigestReader::new(f, digest)
                .map_err(|e| Error::Image(format!("{what} {digest}: {e}")))?;
            io::copy(&mut r, &mut io::sink()).ctx("read", &blob.path)?;
            r.finish()
        }
    };
    if got != digest.to_string() {
        return Err(Error::Image(format!(
            "{what} {digest}: the archive's content has digest {got}"
        )));
    }
    Ok(())
}

/// Copies one archive member to `path` (private to the importer), returning its size and
/// sha256.
fn copy_hashing(from: &mut impl Read, path: &Path) -> io::Result<(u64, String)> {
    use sha2::Digest as _;
    let mut out = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    let mut hasher = Sha256::new();
    let size = layer::for_each_chunk(from, |chunk| {
        hasher.update(chunk);
        out.write_all(chunk)
    })?;
    Ok((size, hex(&hasher.finalize())))
}

enum Hasher {
    Sha256(Sha256),
    Sha512(Sha512),
}

/// A reader that hashes what passes through it, with the algorithm `digest` names.
struct DigestReader<R> {
    inner: R,
    hasher: Hasher,
}

impl<R: Read> DigestReader<R> {
    fn new(inner: R, digest: &Digest) -> io::Result<Self> {
        use sha2::Digest as _;
        let hasher = match digest.algorithm() {
            DigestAlgorithm::Sha256 => Hasher::Sha256(Sha256::new()),
            DigestAlgorithm::Sha512 => Hasher::Sha512(Sha512::new()),
            other => {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    format!("digest algorithm {other} is not supported (sha256 and sha512 are)"),
                ))
            }
        };
        Ok(DigestReader { inner, hasher })
    }

    /// `ALGORITHM:HEX` of everything read.
    fn finish(self) -> String {
        use sha2::Digest as _;
        match self.hasher {
            Hasher::Sha256(h) => format!("sha256:{}", hex(&h.finalize())),
            Hasher::Sha512(h) => format!("sha512:{}", hex(&h.finalize())),
        }
    }
}

impl<R: Read> Read for DigestReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        use sha2::Digest as _;
        let n = self.inner.read(buf)?;
        match &mut self.hasher {
            Hasher::Sha256(h) => h.update(&buf[..n]),
            Hasher::Sha512(h) => h.update(&buf[..n]),
        }
        Ok(n)
    }
}

/// How a blob is compressed, from its first bytes.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
enum Compression {
    None,
    Gzip,
    Zstd,
}

const GZIP_MAGIC: &[u8] = &[0x1f, 0x8b];
const ZSTD_MAGIC: &[u8] = &[0x28, 0xb5, 0x2f, 0xfd];

/// The uncompressed stream of a blob. Where the media type names a compression, the blob's
/// own magic bytes must agree with it.
fn decompress(
    mut reader: BufReader<fs::File>,
    media_type: Option<&MediaType>,
) -> io::Result<Box<dyn Read>> {
    let head = reader.fill_buf()?;
    let found = if head.starts_with(GZIP_MAGIC) {
        Compression::Gzip
    } else if head.starts_with(ZSTD_MAGIC) {
        Compression::Zstd
    } else {
        Compression::None
    };
    if let Some(mt) = media_type {
        let text = mt.to_string();
        let named = if text.ends_with("+gzip") || text.ends_with(".tar.gzip") {
            Some(Compression::Gzip)
        } else if text.ends_with("+zstd") {
            Some(Compression::Zstd)
        } else {
            None
        };
        if named.is_some_and(|n| n != found) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("media type {text} but the blob's content is {found:?}"),
            ));
        }
    }
    Ok(match found {
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(reader)),
        Compression::Zstd => Box::new(
            ruzstd::decoding::StreamingDecoder::new(reader)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("zstd: {e}")))?,
        ),
        Compression::None => Box::new(reader),
    })
}

fn image_config(name: &str, config: &ImageConfiguration, file: &Path) -> ImageConfig {
    let c = config.config().as_ref();
    let list = |v: Option<&Vec<String>>| v.cloned().unwrap_or_default();
    ImageConfig {
        name: name.to_string(),
        entrypoint: list(c.and_then(|c| c.entrypoint().as_ref())),
        cmd: list(c.and_then(|c| c.cmd().as_ref())),
        env: list(c.and_then(|c| c.env().as_ref())),
        working_dir: c.and_then(|c| c.working_dir().clone()).unwrap_or_default(),
        user: c.and_then(|c| c.user().clone()).unwrap_or_default(),
        source: file.display().to_string(),
        created: crate::timefmt::now_rfc3339(),
        // Given by the store when it commits the image.
        id: String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn descriptor(platform: Option<(&str, &str)>, n: u8) -> Descriptor {
        let mut d = serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": format!("sha256:{}", format!("{n:02x}").repeat(32)),
            "size": 1,
        });
        if let Some((os, arch)) = platform {
            d["platform"] = serde_json::json!({"os": os, "architecture": arch});
        }
        serde_json::from_value(d).unwrap()
    }

    #[test]
    fn the_linux_amd64_manifest_is_picked() {
        let many = [
            descriptor(Some(("linux", "arm64")), 1),
            descriptor(Some(("linux", "amd64")), 2),
        ];
        assert_eq!(pick_manifest(&many, "index").unwrap(), &many[1]);
        let none = [descriptor(Some(("linux", "arm64")), 1)];
        assert_eq!(pick_manifest(&none, "index").unwrap(), &none[0]);
        let untagged = [descriptor(None, 1), descriptor(None, 2)];
        assert_eq!(pick_manifest(&untagged, "index").unwrap(), &untagged[0]);
        let other = [
            descriptor(None, 1),
            descriptor(Some(("windows", "amd64")), 2),
        ];
        assert!(pick_manifest(&other, "index")
            .unwrap_err()
            .to_string()
            .contains("no linux/amd64"));
        assert!(pick_manifest(&[], "index").is_err());
    }

    #[test]
    fn digests_are_read_only_from_digest_names() {
        let hex = "ab".repeat(32);
        let want = Digest::from_str(&format!("sha256:{hex}")).unwrap();
        assert_eq!(digest_in_name(&format!("{hex}.json")), Some(want.clone()));
        assert_eq!(digest_in_name(&format!("blobs/sha256/{hex}")), Some(want));
        assert_eq!(digest_in_name(&format!("{hex}/layer.tar")), None);
        assert_eq!(digest_in_name("config.json"), None);
        assert_eq!(digest_in_name(&format!("{}.json", "zz".repeat(32))), None);
    }
}
