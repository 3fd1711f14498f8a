//! Which sandbox a container belongs to. One shim process (and so one agent or VM) serves a
//! whole pod: containerd starts the shim once per container, and the `start` action of a
//! later container of the pod answers with the address of the shim already serving it.
//!
//! The pod is found the way containerd's own shims find it: the CRI annotations
//! (`io.kubernetes.cri.container-type` = `sandbox` | `container`, and
//! `io.kubernetes.cri.sandbox-id` on the containers), or the generic grouping annotation
//! `io.containerd.runc.v2.group` that plain containerd clients can set (`ctr run
//! --annotation`). A container with neither is a sandbox of its own.

use std::collections::HashMap;
use std::path::Path;

pub const CRI_CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
pub const CRI_SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";
pub const GROUP_ANNOTATION: &str = "io.containerd.runc.v2.group";

/// The group (sandbox id) of container `id` with these annotations.
pub fn group_of(id: &str, annotations: &HashMap<String, String>) -> String {
    if annotations.get(CRI_CONTAINER_TYPE).map(String::as_str) == Some("sandbox") {
        return id.to_string();
    }
    for key in [CRI_SANDBOX_ID, GROUP_ANNOTATION] {
        if let Some(group) = annotations.get(key).filter(|g| !g.is_empty()) {
            return group.clone();
        }
    }
    id.to_string()
}

/// The annotations of the bundle's config.json; an unreadable spec has none (the task's
/// Create reports the real problem with the spec).
pub fn bundle_annotations(bundle: &Path) -> HashMap<String, String> {
    let Ok(text) = std::fs::read(bundle.join("config.json")) else {
        return HashMap::new();
    };
    #[derive(serde::Deserialize)]
    struct Partial {
        #[serde(default)]
        annotations: Option<HashMap<String, String>>,
    }
    serde_json::from_slice::<Partial>(&text)
        .ok()
        .and_then(|p| p.annotations)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ann(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn cri_containers_join_their_sandbox() {
        assert_eq!(
            group_of(
                "pause",
                &ann(&[(CRI_CONTAINER_TYPE, "sandbox"), (CRI_SANDBOX_ID, "pause")])
            ),
            "pause"
        );
        assert_eq!(
            group_of(
                "app",
                &ann(&[(CRI_CONTAINER_TYPE, "container"), (CRI_SANDBOX_ID, "pause")])
            ),
            "pause"
        );
    }

    #[test]
    fn generic_group_and_default() {
        assert_eq!(group_of("b", &ann(&[(GROUP_ANNOTATION, "a")])), "a");
        assert_eq!(group_of("c", &HashMap::new()), "c");
        assert_eq!(group_of("d", &ann(&[(GROUP_ANNOTATION, "")])), "d");
    }

    #[test]
    fn annotations_are_read_from_the_bundle() {
        let dir = std::env::temp_dir().join(format!("shim-group-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("config.json"),
            br#"{"ociVersion":"1.0.2","annotations":{"io.containerd.runc.v2.group":"g1"}}"#,
        )
        .unwrap();
        let a = bundle_annotations(&dir);
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(group_of("x", &a), "g1");
        assert!(bundle_annotations(Path::new("/nonexistent")).is_empty());
    }
}
