//! The packaging's Kubernetes manifests, read as a kubelet would read the
//! few fields the tests reproduce: a DaemonSet's first container, its
//! arguments, security context and volumes.

use anyhow::{Context, Result};
use std::collections::BTreeSet;
use yaml_rust2::{Yaml, YamlLoader};

/// `CAP_NET_ADMIN` and `NET_ADMIN` both become `net_admin` (setpriv's
/// spelling).
pub fn cap_name(s: &str) -> String {
    s.trim()
        .trim_start_matches("CAP_")
        .trim_start_matches("cap_")
        .to_ascii_lowercase()
}

/// What a DaemonSet's first container asks for.
pub struct Container {
    pub args: Vec<String>,
    /// Added capabilities, in setpriv's spelling (`net_admin`).
    pub add: BTreeSet<String>,
    pub drop_all: bool,
    pub uid: i64,
    pub privileged: bool,
    pub no_escalation: bool,
    pub read_only_root: bool,
    /// `seccompProfile`: its type and, for `Localhost`, the profile's path
    /// under the kubelet's seccomp directory.
    pub seccomp: Option<(String, Option<String>)>,
    /// Each volume mount: (mount path, what backs it: `configMap NAME` or
    /// `emptyDir`).
    pub mounts: Vec<(String, String)>,
}

/// The first container of the manifest's DaemonSet.
pub fn daemonset(text: &str) -> Result<Container> {
    let docs = YamlLoader::load_from_str(text).context("the manifest is not YAML")?;
    let ds = docs
        .iter()
        .find(|d| d["kind"].as_str() == Some("DaemonSet"))
        .context("no DaemonSet in the manifest")?;
    let pod = &ds["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    let sc = &c["securityContext"];
    let volumes = pod["volumes"].as_vec().cloned().unwrap_or_default();
    let mut mounts = Vec::new();
    for m in c["volumeMounts"].as_vec().into_iter().flatten() {
        let name = m["name"]
            .as_str()
            .context("a volume mount without a name")?;
        let path = m["mountPath"]
            .as_str()
            .context("a volume mount without a path")?;
        let v = volumes
            .iter()
            .find(|v| v["name"].as_str() == Some(name))
            .with_context(|| format!("no volume {name}"))?;
        let backing = if let Some(cm) = v["configMap"]["name"].as_str() {
            format!("configMap {cm}")
        } else if !v["emptyDir"].is_badvalue() {
            "emptyDir".to_string()
        } else {
            format!("unknown volume {name}")
        };
        mounts.push((path.to_string(), backing));
    }
    let seccomp = sc["seccompProfile"]["type"].as_str().map(|t| {
        (
            t.to_string(),
            sc["seccompProfile"]["localhostProfile"]
                .as_str()
                .map(str::to_string),
        )
    });
    Ok(Container {
        args: strings_of(&c["args"]),
        add: strings_of(&sc["capabilities"]["add"])
            .iter()
            .map(|s| cap_name(s))
            .collect(),
        drop_all: strings_of(&sc["capabilities"]["drop"]).contains(&"ALL".to_string()),
        uid: sc["runAsUser"].as_i64().context("runAsUser")?,
        privileged: sc["privileged"].as_bool().unwrap_or(false),
        no_escalation: sc["allowPrivilegeEscalation"].as_bool() == Some(false),
        read_only_root: sc["readOnlyRootFilesystem"].as_bool() == Some(true),
        seccomp,
        mounts,
    })
}

/// A YAML list of strings (an absent list is empty).
pub fn strings_of(y: &Yaml) -> Vec<String> {
    y.as_vec()
        .map(|v| {
            v.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}
