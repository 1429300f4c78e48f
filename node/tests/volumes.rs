//! Pod volumes on a real file system (tmpfs mounts need root): every volume type's files,
//! modes and symlinks, atomic updates, subPath escapes, teardown, missing objects; one test
//! mounts a configMap volume into a real busybox container and sees an update appear.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{
    ConfigMap, ConfigMapProjection, ConfigMapVolumeSource, Container, DownwardAPIProjection,
    DownwardAPIVolumeFile, DownwardAPIVolumeSource, EmptyDirVolumeSource, EnvVar, EnvVarSource,
    HostPathVolumeSource, KeyToPath, LocalVolumeSource, ObjectFieldSelector, PersistentVolume,
    PersistentVolumeClaim, PersistentVolumeClaimSpec, PersistentVolumeClaimStatus,
    PersistentVolumeClaimVolumeSource, PersistentVolumeSpec, Pod, PodSpec, ProjectedVolumeSource,
    ResourceFieldSelector, ResourceRequirements, Secret, SecretVolumeSource,
    ServiceAccountTokenProjection, Volume, VolumeMount, VolumeProjection,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use node::volumes::{VolumeError, VolumeKind, VolumeManager, VolumeObjects};
use parking_lot::Mutex;

/// The seam: objects from maps, counting token requests.
#[derive(Default)]
struct Fake {
    config_maps: Mutex<HashMap<String, ConfigMap>>,
    secrets: Mutex<HashMap<String, Secret>>,
    claims: Mutex<HashMap<String, PersistentVolumeClaim>>,
    pvs: Mutex<HashMap<String, PersistentVolume>>,
    token_calls: AtomicUsize,
}

#[async_trait::async_trait]
impl VolumeObjects for Fake {
    async fn config_map(&self, _ns: &str, name: &str) -> Result<Option<ConfigMap>, VolumeError> {
        Ok(self.config_maps.lock().get(name).cloned())
    }
    async fn secret(&self, _ns: &str, name: &str) -> Result<Option<Secret>, VolumeError> {
        Ok(self.secrets.lock().get(name).cloned())
    }
    async fn persistent_volume_claim(
        &self,
        _ns: &str,
        name: &str,
    ) -> Result<Option<PersistentVolumeClaim>, VolumeError> {
        Ok(self.claims.lock().get(name).cloned())
    }
    async fn persistent_volume(&self, name: &str) -> Result<Option<PersistentVolume>, VolumeError> {
        Ok(self.pvs.lock().get(name).cloned())
    }
    async fn service_account_token(
        &self,
        ns: &str,
        sa: &str,
        audiences: &[String],
        exp: i64,
    ) -> Result<String, VolumeError> {
        let n = self.token_calls.fetch_add(1, Ordering::SeqCst);
        Ok(format!("token-{ns}-{sa}-{}-{exp}-{n}", audiences.join(",")))
    }
}

impl Fake {
    fn set_cm(&self, name: &str, data: &[(&str, &str)]) {
        let cm = ConfigMap {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..ObjectMeta::default()
            },
            data: Some(
                data.iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            ..ConfigMap::default()
        };
        self.config_maps.lock().insert(name.into(), cm);
    }
}

fn root_ok(test: &str) -> bool {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("SKIP {test}: needs root (tmpfs mounts)");
        return false;
    }
    true
}

fn pod(uid: &str, volumes: Vec<Volume>) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some("web".into()),
            namespace: Some("ns1".into()),
            uid: Some(uid.into()),
            labels: Some(BTreeMap::from([
                ("app".into(), "web".into()),
                ("tier".into(), "a\"b".into()),
            ])),
            annotations: Some(BTreeMap::from([("note".into(), "hi".into())])),
            ..ObjectMeta::default()
        },
        spec: Some(PodSpec {
            service_account_name: Some("builder".into()),
            containers: vec![Container {
                name: "app".into(),
                resources: Some(ResourceRequirements {
                    limits: Some(BTreeMap::from([("memory".into(), Quantity("64Mi".into()))])),
                    ..ResourceRequirements::default()
                }),
                ..Container::default()
            }],
            volumes: Some(volumes),
            ..PodSpec::default()
        }),
        ..Pod::default()
    }
}

fn vol(name: &str) -> Volume {
    Volume {
        name: name.into(),
        ..Volume::default()
    }
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

fn mounted(p: &Path) -> Option<String> {
    let mi = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    mi.lines().find_map(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        (f.get(4).map(Path::new) == Some(p)).then(|| l.to_owned())
    })
}

fn mounts_under(p: &Path) -> Vec<String> {
    let mi = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let s = p.to_str().unwrap();
    mi.lines()
        .filter(|l| l.contains(s))
        .map(str::to_owned)
        .collect()
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn manager() -> (tempfile::TempDir, VolumeManager) {
    let t = tempfile::tempdir().unwrap();
    let root = std::fs::canonicalize(t.path()).unwrap();
    (t, VolumeManager::new(root))
}

#[tokio::test]
async fn empty_dirs_on_disk_and_memory() {
    if !root_ok("empty_dirs_on_disk_and_memory") {
        return;
    }
    let (_t, m) = manager();
    let mut disk = vol("scratch");
    disk.empty_dir = Some(EmptyDirVolumeSource::default());
    let mut mem = vol("shm");
    mem.empty_dir = Some(EmptyDirVolumeSource {
        medium: Some("Memory".into()),
        size_limit: Some(Quantity("1Mi".into())),
    });
    let p = pod("uid-empty", vec![disk, mem]);
    let objs = Fake::default();
    let vols = m.setup_pod(&p, &objs).await.unwrap();
    let d = &vols.volumes["scratch"];
    assert_eq!(d.kind, VolumeKind::EmptyDir);
    assert_eq!(
        d.host_path,
        m.pod_dir("uid-empty")
            .join("volumes/kubernetes.io~empty-dir/scratch")
    );
    assert_eq!(mode(&d.host_path), 0o777);
    assert!(mounted(&d.host_path).is_none());
    let s = &vols.volumes["shm"];
    let line = mounted(&s.host_path).expect("tmpfs mounted");
    assert!(
        line.contains(" - tmpfs ") && line.contains("size=1024k"),
        "{line}"
    );
    // sizeLimit is enforced by the tmpfs.
    let big = vec![0u8; 2 << 20];
    assert!(std::fs::write(s.host_path.join("big"), &big).is_err());
    std::fs::remove_file(s.host_path.join("big")).unwrap();
    std::fs::write(s.host_path.join("small"), b"x").unwrap();
    // Idempotent: no second mount on top.
    m.setup_pod(&p, &objs).await.unwrap();
    assert_eq!(mounts_under(&s.host_path).len(), 1);
    assert!(s.host_path.join("small").exists());
    assert_eq!(m.pod_uids_on_disk().unwrap(), vec!["uid-empty".to_owned()]);
    m.teardown_pod("uid-empty").await.unwrap();
    assert!(m.pod_uids_on_disk().unwrap().is_empty());
    assert!(!m.pod_dir("uid-empty").exists());
    assert!(mounts_under(&m.pod_dir("uid-empty")).is_empty());
    // Again: nothing to do.
    m.teardown_pod("uid-empty").await.unwrap();
}

fn cm_volume(
    name: &str,
    cm: &str,
    items: Option<Vec<KeyToPath>>,
    default_mode: Option<i32>,
) -> Volume {
    let mut v = vol(name);
    v.config_map = Some(ConfigMapVolumeSource {
        name: cm.into(),
        items,
        default_mode,
        optional: None,
    });
    v
}

#[tokio::test]
async fn config_map_files_modes_and_symlinks() {
    let (_t, m) = manager();
    let objs = Fake::default();
    objs.set_cm("settings", &[("a.conf", "alpha"), ("b.conf", "beta")]);
    objs.config_maps
        .lock()
        .get_mut("settings")
        .unwrap()
        .binary_data = Some(BTreeMap::from([("blob".into(), ByteString(vec![0, 1, 2]))]));
    let all = cm_volume("all", "settings", None, Some(0o440));
    let items = cm_volume(
        "some",
        "settings",
        Some(vec![KeyToPath {
            key: "a.conf".into(),
            path: "sub/dir/a".into(),
            mode: Some(0o600),
        }]),
        None,
    );
    let p = pod("uid-cm", vec![all, items]);
    let vols = m.setup_pod(&p, &objs).await.unwrap();
    let all = &vols.volumes["all"];
    assert!(all.read_only && all.kind == VolumeKind::ConfigMap);
    let dir = &all.host_path;
    assert!(dir.ends_with("volumes/kubernetes.io~configmap/all"));
    assert_eq!(
        std::fs::read_to_string(dir.join("a.conf")).unwrap(),
        "alpha"
    );
    assert_eq!(std::fs::read(dir.join("blob")).unwrap(), vec![0, 1, 2]);
    assert_eq!(mode(&dir.join("b.conf")), 0o440);
    assert_eq!(
        std::fs::read_link(dir.join("a.conf")).unwrap(),
        Path::new("..data/a.conf")
    );
    let ts = std::fs::read_link(dir.join("..data")).unwrap();
    assert!(ts.to_str().unwrap().starts_with("..20"), "{ts:?}");
    let listing = names(dir);
    assert_eq!(listing.len(), 5, "{listing:?}"); // ts dir, ..data, 3 keys
    let some = &vols.volumes["some"].host_path;
    assert_eq!(names(some).len(), 3, "{:?}", names(some)); // ts, ..data, sub
    assert_eq!(
        std::fs::read_link(some.join("sub")).unwrap(),
        Path::new("..data/sub")
    );
    assert_eq!(
        std::fs::read_to_string(some.join("sub/dir/a")).unwrap(),
        "alpha"
    );
    assert_eq!(mode(&some.join("sub/dir/a")), 0o600);
    // configMap volumes are on disk.
    assert!(mounted(dir).is_none());
    m.teardown_pod("uid-cm").await.unwrap();
    assert!(!m.pod_dir("uid-cm").exists());
}

#[tokio::test]
async fn missing_config_map_secret_and_key_errors() {
    let (_t, m) = manager();
    let objs = Fake::default();
    let p = pod("uid-miss", vec![cm_volume("cfg", "absent", None, None)]);
    let e = m.setup_pod(&p, &objs).await.unwrap_err();
    assert_eq!(
        e.to_string(),
        "MountVolume.SetUp failed for volume \"cfg\" : configmap \"absent\" not found"
    );
    assert!(matches!(e.cause(), VolumeError::ConfigMapNotFound { name, .. } if name == "absent"));
    assert!(e.is_retryable());
    // Optional: an empty volume.
    let mut opt = cm_volume("cfg", "absent", None, None);
    opt.config_map.as_mut().unwrap().optional = Some(true);
    let vols = m
        .setup_pod(&pod("uid-miss", vec![opt]), &objs)
        .await
        .unwrap();
    let dir = &vols.volumes["cfg"].host_path;
    assert_eq!(names(dir).len(), 2); // ..data and its empty ts dir
    // A missing key named in items.
    objs.set_cm("present", &[("k", "v")]);
    let bad = cm_volume(
        "cfg2",
        "present",
        Some(vec![KeyToPath {
            key: "nope".into(),
            path: "x".into(),
            mode: None,
        }]),
        None,
    );
    let e = m
        .setup_pod(&pod("uid-miss", vec![bad]), &objs)
        .await
        .unwrap_err();
    assert!(
        e.to_string()
            .ends_with("configmap references non-existent config key: nope"),
        "{e}"
    );
    // Secrets the same.
    let mut s = vol("sec");
    s.secret = Some(SecretVolumeSource {
        secret_name: Some("creds".into()),
        ..SecretVolumeSource::default()
    });
    let e = m
        .setup_pod(&pod("uid-miss", vec![s]), &objs)
        .await
        .unwrap_err();
    assert!(e.to_string().ends_with("secret \"creds\" not found"), "{e}");
    // A payload path that escapes is refused before anything is written.
    let evil = cm_volume(
        "evil",
        "present",
        Some(vec![KeyToPath {
            key: "k".into(),
            path: "../../escape".into(),
            mode: None,
        }]),
        None,
    );
    let e = m
        .setup_pod(&pod("uid-miss", vec![evil]), &objs)
        .await
        .unwrap_err();
    assert!(matches!(e.cause(), VolumeError::InvalidPath { .. }), "{e}");
    assert!(!e.is_retryable());
    assert!(!m.pod_dir("uid-miss").join("volumes/escape").exists());
    m.teardown_pod("uid-miss").await.unwrap();
}

#[tokio::test]
async fn secret_on_tmpfs_with_modes() {
    if !root_ok("secret_on_tmpfs_with_modes") {
        return;
    }
    let (_t, m) = manager();
    let objs = Fake::default();
    objs.secrets.lock().insert(
        "creds".into(),
        Secret {
            data: Some(BTreeMap::from([
                ("user".into(), ByteString(b"admin".to_vec())),
                ("pass".into(), ByteString(b"s3cr3t".to_vec())),
            ])),
            ..Secret::default()
        },
    );
    let mut s = vol("sec");
    s.secret = Some(SecretVolumeSource {
        secret_name: Some("creds".into()),
        default_mode: Some(0o400),
        items: Some(vec![
            KeyToPath {
                key: "user".into(),
                path: "user".into(),
                mode: None,
            },
            KeyToPath {
                key: "pass".into(),
                path: "p/pass".into(),
                mode: Some(0o600),
            },
        ]),
        optional: None,
    });
    let vols = m.setup_pod(&pod("uid-sec", vec![s]), &objs).await.unwrap();
    let dir = &vols.volumes["sec"].host_path;
    assert!(dir.ends_with("kubernetes.io~secret/sec"));
    let line = mounted(dir).expect("secret on tmpfs");
    assert!(line.contains(" - tmpfs "), "{line}");
    assert_eq!(std::fs::read(dir.join("user")).unwrap(), b"admin");
    assert_eq!(mode(&dir.join("user")), 0o400);
    assert_eq!(mode(&dir.join("p/pass")), 0o600);
    m.teardown_pod("uid-sec").await.unwrap();
    assert!(mounts_under(&m.pod_dir("uid-sec")).is_empty());
    assert!(!m.pod_dir("uid-sec").exists());
}

#[tokio::test]
async fn fs_group_owns_volume_contents() {
    if !root_ok("fs_group_owns_volume_contents") {
        return;
    }
    use std::os::unix::fs::MetadataExt;
    let (_t, m) = manager();
    let objs = Fake::default();
    objs.secrets.lock().insert(
        "creds".into(),
        Secret {
            data: Some(BTreeMap::from([(
                "pass".into(),
                ByteString(b"pw".to_vec()),
            )])),
            ..Secret::default()
        },
    );
    let mut s = vol("sec");
    s.secret = Some(SecretVolumeSource {
        secret_name: Some("creds".into()),
        default_mode: Some(0o400),
        ..SecretVolumeSource::default()
    });
    let mut scratch = vol("scratch");
    scratch.empty_dir = Some(EmptyDirVolumeSource::default());
    let mut p = pod("uid-fsg", vec![s, scratch]);
    p.spec.as_mut().unwrap().security_context =
        Some(k8s_openapi::api::core::v1::PodSecurityContext {
            fs_group: Some(2000),
            ..Default::default()
        });
    let vols = m.setup_pod(&p, &objs).await.unwrap();
    let sec = &vols.volumes["sec"].host_path;
    let meta = std::fs::metadata(sec.join("pass")).unwrap();
    assert_eq!(meta.gid(), 2000);
    // Upstream: read-only volumes get r--r----- added, so 0400 becomes 0440.
    assert_eq!(meta.mode() & 0o777, 0o440);
    let dir = std::fs::metadata(&vols.volumes["scratch"].host_path).unwrap();
    assert_eq!(dir.gid(), 2000);
    assert_eq!(dir.mode() & 0o7777, 0o2777);
    // Set up again: nothing rewritten.
    let vols = m.setup_pod(&p, &objs).await.unwrap();
    assert!(!vols.volumes["sec"].changed);
    m.teardown_pod("uid-fsg").await.unwrap();
}

#[tokio::test]
async fn config_map_update_swaps_atomically() {
    let (_t, m) = manager();
    let objs = Arc::new(Fake::default());
    objs.set_cm("gen", &[("a", "v0"), ("b", "v0")]);
    let p = pod("uid-swap", vec![cm_volume("g", "gen", None, None)]);
    let vols = m.setup_pod(&p, &*objs).await.unwrap();
    let dir = vols.volumes["g"].host_path.clone();
    // A reader resolves ..data once per round and reads both files from that generation:
    // they must always agree (or the generation is gone: a retry, never a mix).
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (dir, stop) = (dir.clone(), stop.clone());
        std::thread::spawn(move || {
            let (mut rounds, mut consistent) = (0u32, 0u32);
            while !stop.load(Ordering::Relaxed) && rounds < 1_000_000 {
                rounds += 1;
                let Ok(ts) = std::fs::read_link(dir.join("..data")) else {
                    continue;
                };
                let generation = dir.join(ts);
                let (Ok(a), Ok(b)) = (
                    std::fs::read_to_string(generation.join("a")),
                    std::fs::read_to_string(generation.join("b")),
                ) else {
                    continue;
                };
                assert_eq!(a, b, "mixed generation");
                consistent += 1;
            }
            consistent
        })
    };
    let mut last_ts = std::fs::read_link(dir.join("..data")).unwrap();
    for i in 1..=30 {
        let v = format!("v{i}");
        objs.set_cm("gen", &[("a", &v), ("b", &v)]);
        let vols = m.setup_pod(&p, &*objs).await.unwrap();
        assert!(vols.volumes["g"].changed);
        let ts = std::fs::read_link(dir.join("..data")).unwrap();
        assert_ne!(ts, last_ts);
        // The layout stays: one timestamped dir, ..data, the user-visible links.
        let listing = names(&dir);
        assert_eq!(listing.len(), 4, "{listing:?}");
        assert!(!dir.join(&last_ts).exists());
        assert_eq!(std::fs::read_to_string(dir.join("a")).unwrap(), v);
        last_ts = ts;
    }
    // Unchanged object: nothing rewritten.
    let vols = m.setup_pod(&p, &*objs).await.unwrap();
    assert!(!vols.volumes["g"].changed);
    assert_eq!(std::fs::read_link(dir.join("..data")).unwrap(), last_ts);
    stop.store(true, Ordering::Relaxed);
    let consistent = reader.join().unwrap();
    assert!(consistent > 0);
    // A key removed from the object disappears from the volume.
    objs.set_cm("gen", &[("a", "last")]);
    m.setup_pod(&p, &*objs).await.unwrap();
    assert!(std::fs::symlink_metadata(dir.join("b")).is_err());
    assert_eq!(std::fs::read_to_string(dir.join("a")).unwrap(), "last");
    m.teardown_pod("uid-swap").await.unwrap();
}

#[tokio::test]
async fn downward_api_files_and_refresh() {
    if !root_ok("downward_api_files_and_refresh") {
        return;
    }
    let (_t, m) = manager();
    let objs = Fake::default();
    let f = |path: &str, field: &str| DownwardAPIVolumeFile {
        path: path.into(),
        field_ref: Some(ObjectFieldSelector {
            api_version: None,
            field_path: field.into(),
        }),
        ..DownwardAPIVolumeFile::default()
    };
    let mut d = vol("info");
    d.downward_api = Some(DownwardAPIVolumeSource {
        default_mode: Some(0o444),
        items: Some(vec![
            f("labels", "metadata.labels"),
            f("annotations", "metadata.annotations"),
            f("name", "metadata.name"),
            f("ns", "metadata.namespace"),
            f("uid", "metadata.uid"),
            f("app", "metadata.labels['app']"),
            DownwardAPIVolumeFile {
                path: "mem".into(),
                resource_field_ref: Some(ResourceFieldSelector {
                    container_name: Some("app".into()),
                    resource: "limits.memory".into(),
                    divisor: Some(Quantity("1Mi".into())),
                }),
                ..DownwardAPIVolumeFile::default()
            },
        ]),
    });
    let mut p = pod("uid-dapi", vec![d]);
    let vols = m.setup_pod(&p, &objs).await.unwrap();
    let dir = &vols.volumes["info"].host_path;
    let read = |n: &str| std::fs::read_to_string(dir.join(n)).unwrap();
    assert_eq!(read("labels"), "app=\"web\"\ntier=\"a\\\"b\"");
    assert_eq!(read("annotations"), "note=\"hi\"");
    assert_eq!(read("name"), "web");
    assert_eq!(read("ns"), "ns1");
    assert_eq!(read("uid"), "uid-dapi");
    assert_eq!(read("app"), "web");
    assert_eq!(read("mem"), "64");
    assert_eq!(mode(&dir.join("mem")), 0o444);
    assert!(mounted(dir).is_some());
    // A label change shows up on the next setup.
    p.metadata
        .labels
        .as_mut()
        .unwrap()
        .insert("app".into(), "web2".into());
    let vols = m.setup_pod(&p, &objs).await.unwrap();
    assert!(vols.volumes["info"].changed);
    assert_eq!(read("app"), "web2");
    m.teardown_pod("uid-dapi").await.unwrap();
}

/// The volume the ServiceAccount admission adds to every pod.
fn kube_api_access() -> Volume {
    let mut v = vol("kube-api-access-abcde");
    v.projected = Some(ProjectedVolumeSource {
        default_mode: Some(0o644),
        sources: Some(vec![
            VolumeProjection {
                service_account_token: Some(ServiceAccountTokenProjection {
                    audience: None,
                    expiration_seconds: Some(3607),
                    path: "token".into(),
                }),
                ..VolumeProjection::default()
            },
            VolumeProjection {
                config_map: Some(ConfigMapProjection {
                    name: "kube-root-ca.crt".into(),
                    items: Some(vec![KeyToPath {
                        key: "ca.crt".into(),
                        path: "ca.crt".into(),
                        mode: None,
                    }]),
                    optional: None,
                }),
                ..VolumeProjection::default()
            },
            VolumeProjection {
                downward_api: Some(DownwardAPIProjection {
                    items: Some(vec![DownwardAPIVolumeFile {
                        path: "namespace".into(),
                        field_ref: Some(ObjectFieldSelector {
                            api_version: Some("v1".into()),
                            field_path: "metadata.namespace".into(),
                        }),
                        ..DownwardAPIVolumeFile::default()
                    }]),
                }),
                ..VolumeProjection::default()
            },
        ]),
    });
    v
}

#[tokio::test]
async fn projected_kube_api_access_and_token_cache() {
    if !root_ok("projected_kube_api_access_and_token_cache") {
        return;
    }
    let (_t, m) = manager();
    let objs = Fake::default();
    let p = pod("uid-proj", vec![kube_api_access()]);
    // The root CA ConfigMap is not published yet: upstream's error.
    let e = m.setup_pod(&p, &objs).await.unwrap_err();
    assert!(
        e.to_string()
            .ends_with("configmap \"kube-root-ca.crt\" not found"),
        "{e}"
    );
    objs.set_cm(
        "kube-root-ca.crt",
        &[("ca.crt", "-----BEGIN CERTIFICATE-----\n")],
    );
    let vols = m.setup_pod(&p, &objs).await.unwrap();
    let v = &vols.volumes["kube-api-access-abcde"];
    assert!(v.read_only && v.kind == VolumeKind::Projected);
    assert!(
        v.host_path
            .ends_with("kubernetes.io~projected/kube-api-access-abcde")
    );
    assert!(mounted(&v.host_path).is_some());
    let read = |n: &str| std::fs::read_to_string(v.host_path.join(n)).unwrap();
    let token = read("token");
    assert!(token.starts_with("token-ns1-builder--3607-"), "{token}");
    assert_eq!(read("ca.crt"), "-----BEGIN CERTIFICATE-----\n");
    assert_eq!(read("namespace"), "ns1");
    assert_eq!(mode(&v.host_path.join("token")), 0o644);
    let calls = objs.token_calls.load(Ordering::SeqCst);
    // Refresh within the token's lifetime: no new token, nothing rewritten.
    let vols = m.setup_pod(&p, &objs).await.unwrap();
    assert_eq!(objs.token_calls.load(Ordering::SeqCst), calls);
    assert!(!vols.volumes["kube-api-access-abcde"].changed);
    m.teardown_pod("uid-proj").await.unwrap();
    // A lifetime below the API's minimum is refused.
    let mut short = kube_api_access();
    short.projected.as_mut().unwrap().sources.as_mut().unwrap()[0]
        .service_account_token
        .as_mut()
        .unwrap()
        .expiration_seconds = Some(60);
    let e = m
        .setup_pod(&pod("uid-proj2", vec![short]), &objs)
        .await
        .unwrap_err();
    assert!(matches!(e.cause(), VolumeError::Token(_)), "{e}");
    m.teardown_pod("uid-proj2").await.unwrap();
}

#[tokio::test]
async fn host_path_types_and_claims() {
    let (t, m) = manager();
    let objs = Fake::default();
    let base = t.path().join("host");
    std::fs::create_dir(&base).unwrap();
    let hp = |name: &str, path: &Path, ty: Option<&str>| {
        let mut v = vol(name);
        v.host_path = Some(HostPathVolumeSource {
            path: path.to_str().unwrap().into(),
            type_: ty.map(str::to_owned),
        });
        v
    };
    let p = pod(
        "uid-hp",
        vec![
            hp("mk", &base.join("made/here"), Some("DirectoryOrCreate")),
            hp("f", &base.join("file"), Some("FileOrCreate")),
        ],
    );
    let vols = m.setup_pod(&p, &objs).await.unwrap();
    assert_eq!(vols.volumes["mk"].host_path, base.join("made/here"));
    assert!(base.join("made/here").is_dir() && base.join("file").is_file());
    assert!(!vols.volumes["mk"].read_only);
    let e = m
        .setup_pod(
            &pod(
                "uid-hp",
                vec![hp("d", &base.join("file"), Some("Directory"))],
            ),
            &objs,
        )
        .await
        .unwrap_err();
    assert!(e.to_string().ends_with("is not a directory"), "{e}");
    let e = m
        .setup_pod(
            &pod("uid-hp", vec![hp("s", &base.join("file"), Some("Socket"))]),
            &objs,
        )
        .await
        .unwrap_err();
    assert!(e.to_string().ends_with("is not a socket file"), "{e}");
    let e = m
        .setup_pod(
            &pod("uid-hp", vec![hp("r", Path::new("relative/x"), None)]),
            &objs,
        )
        .await
        .unwrap_err();
    assert!(matches!(e.cause(), VolumeError::InvalidPath { .. }));

    // Claims: unbound, bound to a hostPath PV, bound to a local PV.
    let claim = |name: &str, pv: Option<&str>, phase: &str| PersistentVolumeClaim {
        spec: Some(PersistentVolumeClaimSpec {
            volume_name: pv.map(str::to_owned),
            ..PersistentVolumeClaimSpec::default()
        }),
        status: Some(PersistentVolumeClaimStatus {
            phase: Some(phase.into()),
            ..PersistentVolumeClaimStatus::default()
        }),
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..ObjectMeta::default()
        },
    };
    let pvc_vol = |name: &str, claim: &str, ro: bool| {
        let mut v = vol(name);
        v.persistent_volume_claim = Some(PersistentVolumeClaimVolumeSource {
            claim_name: claim.into(),
            read_only: Some(ro),
        });
        v
    };
    objs.claims
        .lock()
        .insert("pending".into(), claim("pending", None, "Pending"));
    objs.claims
        .lock()
        .insert("data".into(), claim("data", Some("pv-host"), "Bound"));
    objs.claims
        .lock()
        .insert("fast".into(), claim("fast", Some("pv-local"), "Bound"));
    objs.pvs.lock().insert(
        "pv-host".into(),
        PersistentVolume {
            spec: Some(PersistentVolumeSpec {
                host_path: Some(HostPathVolumeSource {
                    path: base.join("pv1").to_str().unwrap().into(),
                    type_: Some("DirectoryOrCreate".into()),
                }),
                ..PersistentVolumeSpec::default()
            }),
            ..PersistentVolume::default()
        },
    );
    std::fs::create_dir(base.join("local")).unwrap();
    objs.pvs.lock().insert(
        "pv-local".into(),
        PersistentVolume {
            spec: Some(PersistentVolumeSpec {
                local: Some(LocalVolumeSource {
                    path: base.join("local").to_str().unwrap().into(),
                    fs_type: None,
                }),
                ..PersistentVolumeSpec::default()
            }),
            ..PersistentVolume::default()
        },
    );
    let e = m
        .setup_pod(&pod("uid-pvc", vec![pvc_vol("v", "pending", false)]), &objs)
        .await
        .unwrap_err();
    assert!(matches!(e.cause(), VolumeError::ClaimNotBound(_)), "{e}");
    let e = m
        .setup_pod(&pod("uid-pvc", vec![pvc_vol("v", "ghost", false)]), &objs)
        .await
        .unwrap_err();
    assert!(matches!(e.cause(), VolumeError::ClaimNotFound(_)), "{e}");
    let vols = m
        .setup_pod(
            &pod(
                "uid-pvc",
                vec![pvc_vol("a", "data", false), pvc_vol("b", "fast", true)],
            ),
            &objs,
        )
        .await
        .unwrap();
    assert_eq!(vols.volumes["a"].host_path, base.join("pv1"));
    assert!(base.join("pv1").is_dir());
    assert_eq!(vols.volumes["b"].host_path, base.join("local"));
    assert!(vols.volumes["b"].read_only);
    // Teardown never touches host paths.
    std::fs::write(base.join("pv1/keep"), b"x").unwrap();
    m.teardown_pod("uid-pvc").await.unwrap();
    m.teardown_pod("uid-hp").await.unwrap();
    assert!(base.join("pv1/keep").exists() && base.join("file").exists());
}

fn mount(name: &str, path: &str) -> VolumeMount {
    VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        ..VolumeMount::default()
    }
}

#[tokio::test]
async fn container_mounts_sub_paths_and_escapes() {
    if !root_ok("container_mounts_sub_paths_and_escapes") {
        return;
    }
    let (t, m) = manager();
    let objs = Fake::default();
    objs.set_cm("cfg", &[("app.yaml", "x: 1")]);
    let mut scratch = vol("scratch");
    scratch.empty_dir = Some(EmptyDirVolumeSource::default());
    let p = pod(
        "uid-mnt",
        vec![scratch, cm_volume("cfg", "cfg", None, None)],
    );
    let vols = m.setup_pod(&p, &objs).await.unwrap();
    let sdir = vols.volumes["scratch"].host_path.clone();
    let cdir = vols.volumes["cfg"].host_path.clone();
    let mut c = Container {
        name: "app".into(),
        env: Some(vec![
            EnvVar {
                name: "POD".into(),
                value_from: Some(EnvVarSource {
                    field_ref: Some(ObjectFieldSelector {
                        api_version: None,
                        field_path: "metadata.name".into(),
                    }),
                    ..EnvVarSource::default()
                }),
                ..EnvVar::default()
            },
            EnvVar {
                name: "SUB".into(),
                value: Some("logs-$(POD)".into()),
                ..EnvVar::default()
            },
        ]),
        volume_mounts: Some(vec![
            mount("scratch", "/data"),
            VolumeMount {
                read_only: Some(true),
                ..mount("scratch", "/ro")
            },
            VolumeMount {
                sub_path: Some("a/b".into()),
                ..mount("scratch", "/sub")
            },
            VolumeMount {
                sub_path_expr: Some("$(SUB)".into()),
                ..mount("scratch", "/expr")
            },
            mount("cfg", "/etc/app"),
            VolumeMount {
                sub_path: Some("app.yaml".into()),
                ..mount("cfg", "/etc/app.yaml")
            },
        ]),
        ..Container::default()
    };
    let ms = m.container_mounts(&p, &c, &vols).unwrap();
    let got: Vec<(PathBuf, &str, bool)> = ms
        .iter()
        .map(|b| (b.host_path.clone(), b.container_path.as_str(), b.read_only))
        .collect();
    // subPaths are pinned: bind mounts under volume-subpaths/<volume>/<container>/<index>.
    let pin = |vol: &str, i: usize| {
        m.pod_dir("uid-mnt")
            .join("volume-subpaths")
            .join(vol)
            .join("app")
            .join(i.to_string())
    };
    assert_eq!(
        got,
        vec![
            (sdir.clone(), "/data", false),
            (sdir.clone(), "/ro", true),
            (pin("scratch", 2), "/sub", false),
            (pin("scratch", 3), "/expr", false),
            (cdir.clone(), "/etc/app", true),
            (pin("cfg", 5), "/etc/app.yaml", true),
        ]
    );
    assert!(sdir.join("a/b").is_dir() && sdir.join("logs-web").is_dir());
    for (v, i) in [("scratch", 2), ("scratch", 3), ("cfg", 5)] {
        assert!(mounted(&pin(v, i)).is_some(), "{v}/{i} not pinned");
    }
    assert_eq!(std::fs::read_to_string(pin("cfg", 5)).unwrap(), "x: 1");
    std::fs::write(sdir.join("a/b/f"), b"inside").unwrap();
    assert_eq!(
        std::fs::read(pin("scratch", 2).join("f")).unwrap(),
        b"inside"
    );
    // Swapping a checked component for a symlink afterwards (what a container sharing the
    // volume could race) does not redirect the pinned mount.
    let outside = t.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::rename(sdir.join("a"), sdir.join("a-old")).unwrap();
    std::os::unix::fs::symlink(&outside, sdir.join("a")).unwrap();
    assert_eq!(
        std::fs::read(pin("scratch", 2).join("f")).unwrap(),
        b"inside"
    );
    // And resolving it again now refuses the escape.
    let e = m.container_mounts(&p, &c, &vols).unwrap_err();
    assert!(matches!(e, VolumeError::SubPath { .. }), "{e}");
    std::fs::remove_file(sdir.join("a")).unwrap();
    std::fs::rename(sdir.join("a-old"), sdir.join("a")).unwrap();
    // Called again (a container restart): the pins are replaced, not stacked.
    m.container_mounts(&p, &c, &vols).unwrap();
    assert_eq!(mounts_under(&pin("scratch", 2)).len(), 1);

    // Escapes: `..`, absolute, a symlink out of the volume (what a container could plant).
    std::os::unix::fs::symlink(&outside, sdir.join("evil")).unwrap();
    std::os::unix::fs::symlink("../../../../..", sdir.join("up")).unwrap();
    for bad in ["../x", "/etc", "evil", "evil/new", "up/etc", "a/../../x"] {
        c.volume_mounts = Some(vec![VolumeMount {
            sub_path: Some(bad.into()),
            ..mount("scratch", "/x")
        }]);
        let e = m.container_mounts(&p, &c, &vols).unwrap_err();
        assert!(matches!(e, VolumeError::SubPath { .. }), "{bad}: {e}");
    }
    assert!(!outside.join("new").exists());
    // subPathExpr expanding to an escape.
    c.volume_mounts = Some(vec![VolumeMount {
        sub_path_expr: Some("$(POD)/../../..".into()),
        ..mount("scratch", "/x")
    }]);
    assert!(m.container_mounts(&p, &c, &vols).is_err());
    // Unknown volume, relative mount path.
    c.volume_mounts = Some(vec![mount("nope", "/x")]);
    let e = m.container_mounts(&p, &c, &vols).unwrap_err();
    assert_eq!(
        e.to_string(),
        "cannot find volume \"nope\" to mount into container \"app\""
    );
    c.volume_mounts = Some(vec![mount("scratch", "rel")]);
    assert!(m.container_mounts(&p, &c, &vols).is_err());

    // Teardown removes the planted links without following them.
    std::fs::write(outside.join("sentinel"), b"keep").unwrap();
    m.teardown_pod("uid-mnt").await.unwrap();
    assert!(!m.pod_dir("uid-mnt").exists());
    assert!(mounts_under(&m.pod_dir("uid-mnt")).is_empty());
    assert_eq!(std::fs::read(outside.join("sentinel")).unwrap(), b"keep");
    // A bad uid is refused outright.
    assert!(m.teardown_pod("..").await.is_err());
    assert!(m.teardown_pod("a/b").await.is_err());
}

#[tokio::test(flavor = "current_thread")]
async fn config_map_update_reaches_a_running_container() {
    use node::cgroup::CgroupDriver;
    use node::runtime::{ContainerConfig, ContainerState, Runtime, RuntimeConfig, SandboxConfig};
    let test = "config_map_update_reaches_a_running_container";
    if !common::can_run_as_root(test) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let root = std::fs::canonicalize(tmp.path()).unwrap();
    let group = format!("kubeshard-test-{}", uuid::Uuid::new_v4().simple());
    let cgroups = match CgroupDriver::detect(&group) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("SKIP {test}: {e}");
            return;
        }
    };
    let mut cfg = RuntimeConfig::new(
        &root.join("data"),
        PathBuf::from(env!("CARGO_BIN_EXE_kubeshard-shim")),
    )
    .unwrap();
    cfg.cgroups = cgroups.clone();
    cfg.start_timeout = Duration::from_secs(20);
    let rt = Runtime::new(cfg).unwrap();
    rt.images().import(&common::busybox_image(&root)).unwrap();

    let m = VolumeManager::new(root.join("kubelet"));
    let objs = Fake::default();
    objs.set_cm("live", &[("key", "v1")]);
    let mut p = pod("uid-live", vec![cm_volume("cfg", "live", None, None)]);
    let container = Container {
        name: "app".into(),
        volume_mounts: Some(vec![mount("cfg", "/cfg")]),
        ..Container::default()
    };
    p.spec.as_mut().unwrap().containers = vec![container.clone()];
    let vols = m.setup_pod(&p, &objs).await.unwrap();
    let mounts = m.container_mounts(&p, &container, &vols).unwrap();

    let sb = rt
        .create_sandbox(&SandboxConfig {
            name: "web".into(),
            namespace: "ns1".into(),
            uid: "uid-live".into(),
            hostname: "web".into(),
            ..SandboxConfig::default()
        })
        .await
        .unwrap();
    // Waits (at most ~20 s) for the new value; a write to the read-only mount must fail.
    let script = "grep -q v1 /cfg/key || exit 2; touch /cfg/x 2>/dev/null && exit 3; \
                  i=0; while :; do grep -q v2 /cfg/key && exit 0; i=$((i+1)); \
                  case $i in 200) exit 1;; esac; sleep 0.1; done";
    let id = rt
        .create_container(
            &sb,
            &ContainerConfig {
                name: "app".into(),
                image: "kubeshard.test/busybox:1".into(),
                command: vec!["sh".into(), "-c".into(), script.into()],
                mounts,
                ..ContainerConfig::default()
            },
        )
        .await
        .unwrap();
    rt.start_container(&id).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    objs.set_cm("live", &[("key", "v2")]);
    let vols = m.setup_pod(&p, &objs).await.unwrap();
    assert!(vols.volumes["cfg"].changed);
    let st = rt
        .wait_container(&id, Duration::from_secs(30))
        .await
        .unwrap();
    let ContainerState::Exited(exit) = &st.state else {
        panic!("{st:?}")
    };
    assert_eq!(exit.exit_code, 0, "{exit:?}");
    rt.remove_sandbox(&sb).await.unwrap();
    m.teardown_pod("uid-live").await.unwrap();
    if let CgroupDriver::V2 { base } = &cgroups {
        let _ = std::fs::remove_dir(base);
    }
    if let CgroupDriver::V1 { bases } = &cgroups {
        for (_, b) in bases {
            let _ = std::fs::remove_dir(b);
        }
    }
}

#[test]
fn public_types_are_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<VolumeManager>();
    check::<VolumeError>();
    check::<node::volumes::PodVolumes>();
}
