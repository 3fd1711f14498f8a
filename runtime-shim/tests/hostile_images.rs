//! Crafted image archives against `sandbox image import`'s importer: each one tries to reach
//! out of the image store (symlinks planted by one layer and used by the next, `..` names,
//! absolute names, hard links) or to slip in content that its digests do not vouch for. Every
//! test checks a canary directory outside the store before and after, and that a refused
//! import leaves nothing in the store. docs/security.md lists what each case must do.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use runtime_shim::image::{import::import, ImageStore};
use sha2::{Digest, Sha256};

/// One test's directories: the store, a canary outside it, and where archives are written.
struct Scene {
    top: PathBuf,
    store: ImageStore,
    canary: PathBuf,
}

impl Scene {
    fn new(name: &str) -> Scene {
        let top = std::env::temp_dir().join(format!("hostile-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&top);
        let canary = top.join("canary");
        fs::create_dir_all(canary.join("dir")).unwrap();
        fs::write(canary.join("victim"), b"host data").unwrap();
        fs::write(canary.join("dir/keep"), b"more host data").unwrap();
        let store = ImageStore::new(top.join("store"));
        Scene { top, store, canary }
    }

    /// The canary as a path inside an image: the same absolute path, which a layer's
    /// symlinks use to point out of the rootfs.
    fn canary_abs(&self) -> String {
        self.canary.display().to_string()
    }

    /// Every file under the canary with its content, mode and link count.
    fn canary_state(&self) -> BTreeMap<PathBuf, (Vec<u8>, u32, u64)> {
        let mut out = BTreeMap::new();
        let mut stack = vec![self.canary.clone()];
        while let Some(d) = stack.pop() {
            for e in fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                let m = fs::symlink_metadata(&p).unwrap();
                if m.is_dir() {
                    stack.push(p.clone());
                }
                let data = if m.is_file() {
                    fs::read(&p).unwrap()
                } else {
                    Vec::new()
                };
                out.insert(p, (data, m.mode(), m.nlink()));
            }
        }
        out
    }

    /// Imports `archive` as `name`, asserting that the canary is as it was.
    fn import(&self, archive: &Path, name: &str) -> Result<PathBuf, String> {
        let before = self.canary_state();
        let result = import(&self.store, archive, Some(name));
        assert_eq!(
            self.canary_state(),
            before,
            "the import of {} changed the canary outside the store",
            archive.display()
        );
        result
            .map(|_| self.store.rootfs(name).unwrap())
            .map_err(|e| e.to_string())
    }

    /// Imports `archive`, which must be refused with an error containing `expect`, leaving
    /// no image, staging or work directory in the store.
    fn refused(&self, archive: &Path, expect: &str) -> String {
        let err = self
            .import(archive, "hostile")
            .expect_err("the crafted archive was imported");
        assert!(
            err.contains(expect),
            "error {err:?} does not say {expect:?}"
        );
        assert!(!self.store.exists("hostile"));
        let images = self.store.root().join("images");
        let left: Vec<_> = fs::read_dir(self.store.root())
            .into_iter()
            .chain(fs::read_dir(&images))
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n != "images")
            .collect();
        assert!(
            left.is_empty(),
            "left in the store after a refusal: {left:?}"
        );
        err
    }

    fn path(&self, name: &str) -> PathBuf {
        self.top.join(name)
    }
}

impl Drop for Scene {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.top);
    }
}

/// A tar entry of a crafted layer.
enum E<'a> {
    Dir(&'a str),
    File(&'a str, &'a [u8]),
    FileMode(&'a str, &'a [u8], u32),
    Symlink(&'a str, &'a str),
    Hardlink(&'a str, &'a str),
    CharDev(&'a str, u32, u32),
}

/// Writes `name` into the header's name field as raw bytes: the tar crate's own setters
/// refuse `..` and absolute names, which is what these archives must carry.
fn raw_name(h: &mut tar::Header, name: &str) {
    let field = &mut h.as_old_mut().name;
    assert!(
        name.len() < field.len(),
        "{name} too long for a plain header"
    );
    field.fill(0);
    field[..name.len()].copy_from_slice(name.as_bytes());
}

fn raw_link(h: &mut tar::Header, target: &str) {
    let field = &mut h.as_old_mut().linkname;
    field.fill(0);
    field[..target.len()].copy_from_slice(target.as_bytes());
}

fn layer(entries: &[E]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_gnu();
        h.set_mtime(0);
        h.set_uid(0);
        h.set_gid(0);
        let (name, data): (&str, &[u8]) = match e {
            E::Dir(n) => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o755);
                (n, b"")
            }
            E::File(n, d) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(0o644);
                (n, d)
            }
            E::FileMode(n, d, m) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(*m);
                (n, d)
            }
            E::Symlink(n, t) | E::Hardlink(n, t) => {
                h.set_entry_type(if matches!(e, E::Symlink(..)) {
                    tar::EntryType::Symlink
                } else {
                    tar::EntryType::Link
                });
                h.set_mode(0o777);
                raw_link(&mut h, t);
                (n, b"")
            }
            E::CharDev(n, major, minor) => {
                h.set_entry_type(tar::EntryType::Char);
                h.set_mode(0o666);
                h.set_device_major(*major).unwrap();
                h.set_device_minor(*minor).unwrap();
                (n, b"")
            }
        };
        raw_name(&mut h, name);
        h.set_size(data.len() as u64);
        h.set_cksum();
        b.append(&h, data).unwrap();
    }
    b.into_inner().unwrap()
}

fn sha256(data: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(data))
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn zstd(data: &[u8]) -> Vec<u8> {
    ruzstd::encoding::compress_to_vec(data, ruzstd::encoding::CompressionLevel::Fastest)
}

fn config(diff_ids: &[String]) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Env": ["PATH=/bin"], "Cmd": ["sh"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }))
    .unwrap()
}

fn add(b: &mut tar::Builder<fs::File>, name: &str, data: &[u8]) {
    let mut h = tar::Header::new_gnu();
    h.set_mode(0o644);
    h.set_size(data.len() as u64);
    h.set_mtime(0);
    b.append_data(&mut h, name, data).unwrap();
}

/// A `docker save` archive of uncompressed layers, with the diff_ids they really have.
fn docker_archive(path: &Path, layers: &[Vec<u8>]) {
    let ids: Vec<String> = layers.iter().map(|l| sha256(l)).collect();
    docker_archive_claiming(path, layers, &ids);
}

/// A `docker save` archive whose config claims `diff_ids` for `layers`.
fn docker_archive_claiming(path: &Path, layers: &[Vec<u8>], diff_ids: &[String]) {
    let config = config(diff_ids);
    let config_name = format!("{}.json", &sha256(&config)["sha256:".len()..]);
    let mut b = tar::Builder::new(fs::File::create(path).unwrap());
    add(&mut b, &config_name, &config);
    let mut names = Vec::new();
    for (i, l) in layers.iter().enumerate() {
        let name = format!("layer{i}/layer.tar");
        add(&mut b, &name, l);
        names.push(name);
    }
    let manifest = serde_json::json!([{
        "Config": config_name,
        "RepoTags": ["hostile:latest"],
        "Layers": names,
    }]);
    add(
        &mut b,
        "manifest.json",
        &serde_json::to_vec(&manifest).unwrap(),
    );
    b.finish().unwrap();
}

/// How an OCI layout's layer blob is stored and described.
struct OciLayer {
    blob: Vec<u8>,
    media_type: &'static str,
    /// The digest the manifest claims (the blob's own unless a test lies).
    digest: String,
    diff_id: String,
}

impl OciLayer {
    fn plain(tar: Vec<u8>) -> OciLayer {
        OciLayer {
            digest: sha256(&tar),
            diff_id: sha256(&tar),
            blob: tar,
            media_type: "application/vnd.oci.image.layer.v1.tar",
        }
    }

    fn gzip(tar: Vec<u8>) -> OciLayer {
        let blob = gzip(&tar);
        OciLayer {
            digest: sha256(&blob),
            diff_id: sha256(&tar),
            blob,
            media_type: "application/vnd.oci.image.layer.v1.tar+gzip",
        }
    }

    fn zstd(tar: Vec<u8>) -> OciLayer {
        let blob = zstd(&tar);
        OciLayer {
            digest: sha256(&blob),
            diff_id: sha256(&tar),
            blob,
            media_type: "application/vnd.oci.image.layer.v1.tar+zstd",
        }
    }
}

/// An OCI image layout archive; blobs are stored under their real digests, so a layer whose
/// `digest` lies is found under the name it claims only if `store_as_claimed`.
fn oci_archive(path: &Path, layers: &[OciLayer], store_as_claimed: bool, skip_blob: Option<usize>) {
    let diff_ids: Vec<String> = layers.iter().map(|l| l.diff_id.clone()).collect();
    let config = config(&diff_ids);
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": sha256(&config),
            "size": config.len(),
        },
        "layers": layers.iter().map(|l| serde_json::json!({
            "mediaType": l.media_type,
            "digest": l.digest,
            "size": l.blob.len(),
        })).collect::<Vec<_>>(),
    }))
    .unwrap();
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": sha256(&manifest),
            "size": manifest.len(),
            "annotations": {"org.opencontainers.image.ref.name": "hostile:latest"},
        }],
    }))
    .unwrap();
    let mut b = tar::Builder::new(fs::File::create(path).unwrap());
    add(&mut b, "oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#);
    add(&mut b, "index.json", &index);
    let blob_name = |d: &str| format!("blobs/sha256/{}", &d["sha256:".len()..]);
    add(&mut b, &blob_name(&sha256(&manifest)), &manifest);
    add(&mut b, &blob_name(&sha256(&config)), &config);
    for (i, l) in layers.iter().enumerate() {
        if skip_blob == Some(i) {
            continue;
        }
        let name = if store_as_claimed {
            blob_name(&l.digest)
        } else {
            blob_name(&sha256(&l.blob))
        };
        add(&mut b, &name, &l.blob);
    }
    b.finish().unwrap();
}

/// `rel` (an absolute host path) as it lies inside `rootfs`.
fn inside(rootfs: &Path, rel: &str) -> PathBuf {
    rootfs.join(rel.trim_start_matches('/'))
}

#[test]
fn symlink_then_whiteout_removes_nothing_outside() {
    let s = Scene::new("whiteout");
    let c = s.canary_abs();
    let archive = s.path("a.tar");
    docker_archive(
        &archive,
        &[
            layer(&[E::Symlink("link", &c)]),
            layer(&[
                E::File("link/.wh.victim", b""),
                E::File("link/dir/.wh.keep", b""),
            ]),
        ],
    );
    // Succeeds: the whiteout hides `victim` where the container would see it, inside the
    // rootfs, where there is none.
    let rootfs = s.import(&archive, "whiteout").unwrap();
    assert_eq!(fs::read_link(rootfs.join("link")).unwrap(), Path::new(&c));
}

#[test]
fn symlink_then_opaque_whiteout_clears_nothing_outside() {
    let s = Scene::new("opaque");
    let c = s.canary_abs();
    let archive = s.path("a.tar");
    docker_archive(
        &archive,
        &[
            layer(&[
                E::Symlink("link", &c),
                E::Symlink("dirlink", &format!("{c}/dir")),
            ]),
            layer(&[
                E::File("link/.wh..wh..opq", b""),
                E::File("dirlink/.wh..wh..opq", b""),
            ]),
        ],
    );
    s.import(&archive, "opaque").unwrap();
}

#[test]
fn regular_file_over_a_symlink_replaces_the_symlink() {
    let s = Scene::new("overwrite");
    let c = s.canary_abs();
    let archive = s.path("a.tar");
    docker_archive(
        &archive,
        &[
            layer(&[E::Symlink("f", &format!("{c}/victim")), E::Symlink("d", &c)]),
            layer(&[
                E::File("f", b"from the image"),
                // Through the directory symlink: lands inside the rootfs.
                E::File("d/planted", b"from the image"),
                E::File("d/victim", b"from the image"),
            ]),
        ],
    );
    let rootfs = s.import(&archive, "overwrite").unwrap();
    let f = fs::symlink_metadata(rootfs.join("f")).unwrap();
    assert!(f.is_file(), "f is still a symlink");
    assert_eq!(fs::read(rootfs.join("f")).unwrap(), b"from the image");
    assert_eq!(
        fs::read(inside(&rootfs, &c).join("planted")).unwrap(),
        b"from the image"
    );
}

#[test]
fn symlink_chains_resolve_inside_the_rootfs() {
    let s = Scene::new("chain");
    let c = s.canary_abs();
    let archive = s.path("a.tar");
    let up = "../../../../../../../../../../..";
    docker_archive(
        &archive,
        &[
            layer(&[
                E::Dir("a"),
                E::Symlink("a/up", up),
                E::Symlink("hop1", "a/up"),
                E::Symlink("hop2", &format!("hop1{c}")),
            ]),
            layer(&[
                E::File("hop2/planted", b"x"),
                E::File("hop2/.wh.victim", b""),
                E::File("hop2/dir/.wh..wh..opq", b""),
            ]),
        ],
    );
    let rootfs = s.import(&archive, "chain").unwrap();
    assert_eq!(fs::read(inside(&rootfs, &c).join("planted")).unwrap(), b"x");
}

#[test]
fn dotdot_names_are_refused() {
    let s = Scene::new("dotdot");
    let archive = s.path("a.tar");
    let escape = format!("../../../../../../../..{}/escaped", s.canary_abs());
    docker_archive(&archive, &[layer(&[E::File(&escape, b"x")])]);
    s.refused(&archive, "climbs out of the rootfs");
    assert!(!s.canary.join("escaped").exists());

    let archive = s.path("b.tar");
    docker_archive(
        &archive,
        &[layer(&[E::Dir("a"), E::File("a/../../x", b"x")])],
    );
    s.refused(&archive, "climbs out of the rootfs");
}

#[test]
fn absolute_names_land_inside_the_rootfs() {
    let s = Scene::new("absolute");
    let c = s.canary_abs();
    let archive = s.path("a.tar");
    docker_archive(
        &archive,
        &[layer(&[
            E::File(&format!("{c}/victim"), b"from the image"),
            E::File("/etc/hostname", b"image"),
        ])],
    );
    let rootfs = s.import(&archive, "absolute").unwrap();
    assert_eq!(
        fs::read(inside(&rootfs, &c).join("victim")).unwrap(),
        b"from the image"
    );
    assert_eq!(fs::read(rootfs.join("etc/hostname")).unwrap(), b"image");
}

#[test]
fn hard_links_to_outside_are_refused() {
    let s = Scene::new("hardlink");
    let c = s.canary_abs();
    let climbing = format!("../../../../../../..{c}/victim");
    let absolute = format!("{c}/victim");
    let cases: [(&str, Vec<E>, &str); 3] = [
        (
            "dotdot.tar",
            vec![E::Hardlink("hl", &climbing)],
            "climbs out of the rootfs",
        ),
        (
            "absolute.tar",
            vec![E::Hardlink("hl", &absolute)],
            "hard link target",
        ),
        (
            "via-symlink.tar",
            vec![E::Symlink("s", &c), E::Hardlink("hl", "s/victim")],
            "hard link target",
        ),
    ];
    for (name, entries, expect) in cases {
        let archive = s.path(name);
        docker_archive(&archive, &[layer(&entries)]);
        let err = s.refused(&archive, expect);
        assert!(
            err.contains("hl"),
            "{name}: the error names no entry: {err}"
        );
    }
    // The canary's link count was checked by every import: still one.
    assert_eq!(fs::metadata(s.canary.join("victim")).unwrap().nlink(), 1);
}

#[test]
fn hard_links_inside_the_image_work() {
    let s = Scene::new("hardlink-ok");
    let archive = s.path("a.tar");
    docker_archive(
        &archive,
        &[
            layer(&[E::Dir("bin"), E::File("bin/tool", b"tool")]),
            layer(&[
                E::Hardlink("bin/alias", "bin/tool"),
                E::Hardlink("/abs", "/bin/tool"),
            ]),
        ],
    );
    let rootfs = s.import(&archive, "hardlink-ok").unwrap();
    let a = fs::metadata(rootfs.join("bin/alias")).unwrap();
    let t = fs::metadata(rootfs.join("bin/tool")).unwrap();
    assert_eq!((a.dev(), a.ino()), (t.dev(), t.ino()));
    assert_eq!(t.nlink(), 3);
}

#[test]
fn a_layer_whose_digest_lies_is_refused() {
    let s = Scene::new("digest");
    let good = OciLayer::gzip(layer(&[E::File("ok", b"ok")]));
    let mut liar = OciLayer::gzip(layer(&[E::File("evil", b"evil")]));
    let claimed = sha256(b"something else entirely");
    liar.digest = claimed.clone();
    let archive = s.path("a.tar");
    oci_archive(&archive, &[good, liar], true, None);
    let err = s.refused(&archive, &claimed);
    assert!(err.contains("content has digest"), "{err}");

    // The blob is what it says, but its uncompressed content is not the config's diff_id.
    let mut liar = OciLayer::zstd(layer(&[E::File("evil", b"evil")]));
    let claimed_diff = sha256(b"another layer");
    liar.diff_id = claimed_diff.clone();
    let archive = s.path("b.tar");
    oci_archive(&archive, &[liar], true, None);
    let err = s.refused(&archive, &claimed_diff);
    assert!(err.contains("diff_id"), "{err}");

    // A docker archive's layer against its diff_id.
    let archive = s.path("c.tar");
    let l = layer(&[E::File("evil", b"evil")]);
    docker_archive_claiming(&archive, &[l], std::slice::from_ref(&claimed_diff));
    let err = s.refused(&archive, "layer0/layer.tar");
    assert!(err.contains(&claimed_diff), "{err}");
}

#[test]
fn a_truncated_layer_is_refused() {
    let s = Scene::new("truncated");
    let full = layer(&[E::File("big", &[7u8; 4096]), E::File("after", b"x")]);
    let cut = full[..1024].to_vec();
    // Uncompressed, claiming the full layer's diff_id.
    let archive = s.path("a.tar");
    docker_archive_claiming(&archive, &[cut], &[sha256(&full)]);
    s.refused(&archive, "layer 1/1 (layer0/layer.tar)");

    // Compressed, the descriptor naming the cut blob truthfully: the stream itself ends early.
    let gz = gzip(&full);
    let cut_gz = gz[..gz.len() / 2].to_vec();
    let layer = OciLayer {
        digest: sha256(&cut_gz),
        diff_id: sha256(&full),
        blob: cut_gz,
        media_type: "application/vnd.oci.image.layer.v1.tar+gzip",
    };
    let claimed = layer.digest.clone();
    let archive = s.path("b.tar");
    oci_archive(&archive, &[layer], true, None);
    s.refused(&archive, &claimed);
}

#[test]
fn a_manifest_naming_a_missing_blob_is_refused() {
    let s = Scene::new("missing");
    let l = OciLayer::plain(layer(&[E::File("ok", b"ok")]));
    let digest = l.digest.clone();
    let archive = s.path("a.tar");
    oci_archive(&archive, &[l], true, Some(0));
    let err = s.refused(&archive, &digest);
    assert!(err.contains("missing"), "{err}");

    // docker: a layer path that is not in the archive.
    let archive = s.path("b.tar");
    let config = config(&[sha256(b"")]);
    let config_name = format!("{}.json", &sha256(&config)["sha256:".len()..]);
    let mut b = tar::Builder::new(fs::File::create(&archive).unwrap());
    add(&mut b, &config_name, &config);
    let manifest = serde_json::json!([{"Config": config_name, "Layers": ["nope/layer.tar"]}]);
    add(
        &mut b,
        "manifest.json",
        &serde_json::to_vec(&manifest).unwrap(),
    );
    b.finish().unwrap();
    s.refused(&archive, "nope/layer.tar");
}

#[test]
fn compressed_layers_devices_setuid_and_duplicates() {
    let s = Scene::new("formats");
    let zeros = vec![0u8; 8 << 20];
    let archive = s.path("a.tar");
    oci_archive(
        &archive,
        &[
            OciLayer::gzip(layer(&[
                E::Dir("bin"),
                E::FileMode("bin/su", b"setuid", 0o4755),
                E::File("dup", b"first"),
                E::CharDev("dev-mem", 1, 1),
            ])),
            OciLayer::zstd(layer(&[
                E::File("dup", b"second"),
                E::File("dup", b"third"),
                E::File("sparse", &zeros),
            ])),
            OciLayer::plain(layer(&[E::Dir("bin"), E::File("bin/.wh.nothing", b"")])),
        ],
        false,
        None,
    );
    let rootfs = s.import(&archive, "formats").unwrap();
    // setuid kept, for the container; the store is root's alone.
    let su = fs::metadata(rootfs.join("bin/su")).unwrap();
    assert_eq!(su.permissions().mode() & 0o7777, 0o4755);
    let images = fs::metadata(s.store.root().join("images")).unwrap();
    assert_eq!(images.permissions().mode() & 0o777, 0o700);
    // A later entry of a name replaces the earlier one.
    assert_eq!(fs::read(rootfs.join("dup")).unwrap(), b"third");
    // Device nodes are not created on the host.
    assert!(fs::symlink_metadata(rootfs.join("dev-mem")).is_err());
    // Zeros cost no disk.
    let sparse = fs::metadata(rootfs.join("sparse")).unwrap();
    assert_eq!(sparse.len(), zeros.len() as u64);
    assert!(
        sparse.blocks() * 512 < 1 << 20,
        "an 8 MiB file of zeros takes {} bytes",
        sparse.blocks() * 512
    );
    let cfg = s.store.get("formats").unwrap();
    assert_eq!(cfg.cmd, vec!["sh"]);
}

/// The reported attack, end to end through `sandbox image import`: a two-layer `docker save`
/// archive whose first layer plants a symlink to a host directory and whose second whites
/// out a file through it; then one with a lying digest, which the command must refuse with a
/// message naming the layer and a non-zero exit.
#[test]
fn the_sandbox_command_keeps_the_host_untouched() {
    let s = Scene::new("cli");
    let c = s.canary_abs();
    let sandbox = env!("CARGO_BIN_EXE_sandbox");
    let run = |archive: &Path| {
        let before = s.canary_state();
        let out = std::process::Command::new(sandbox)
            .arg("--image-store")
            .arg(s.store.root())
            .args(["image", "import", "--name", "cli-test"])
            .arg(archive)
            .env_remove("SANDBOX_IMAGE_STORE")
            .output()
            .expect("run sandbox image import");
        assert_eq!(
            s.canary_state(),
            before,
            "sandbox image import changed the canary"
        );
        out
    };

    let archive = s.path("attack.tar");
    docker_archive(
        &archive,
        &[
            layer(&[E::Symlink("etc", &c)]),
            layer(&[E::File("etc/.wh.victim", b"")]),
        ],
    );
    let out = run(&archive);
    assert!(
        out.status.success(),
        "import failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "cli-test");

    let archive = s.path("lying.tar");
    let l = layer(&[E::File("evil", b"evil")]);
    let claimed = sha256(b"not this layer");
    docker_archive_claiming(&archive, &[l], std::slice::from_ref(&claimed));
    let out = run(&archive);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a lying layer was imported");
    assert!(
        stderr.contains("layer0/layer.tar") && stderr.contains(&claimed),
        "the error does not name the layer and its diff_id: {stderr}"
    );
}
