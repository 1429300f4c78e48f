//! Image pulls from a real registry (Debian's `docker-registry` on 127.0.0.1, images pushed
//! with `skopeo copy` from OCI archives of busybox-static): plain HTTP on loopback, HTTPS with
//! a self-signed CA in `certs.d` and htpasswd auth through image pull secrets (the pod's and
//! its ServiceAccount's), wrong credentials (ErrImagePull then ImagePullBackOff with the
//! registry's message), a tampered blob refused, pull policies and deduplicated pulls, and
//! image garbage collection that keeps the images containers use.

mod kubelet_common;
mod registry_common;

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use api::client::{Api, PostParams};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use kubelet_common::*;
use node::image::ImageStore;
use node::image::auth::Keyring;
use node::image::manager::{EnsureError, ImageGcPolicy, ImageManager, PullPolicy};
use node::image::registry::RegistryConfig;
use registry_common::{Options, PASSWORD, Registry, USER, busybox_archive, have_tools};
use serde_json::json;

fn manager(data: &Path) -> ImageManager {
    let store = ImageStore::open(data).unwrap();
    ImageManager::new(store, RegistryConfig::new(data), ImageGcPolicy::default())
}

fn waiting(p: &k8s_openapi::api::core::v1::Pod) -> Option<(String, String)> {
    let cs = cstatus(p, "c")?;
    let w = cs["state"].get("waiting")?;
    Some((
        w["reason"].as_str().unwrap_or("").to_string(),
        w["message"].as_str().unwrap_or("").to_string(),
    ))
}

fn docker_config_secret(name: &str, host: &str, user: &str, password: &str) -> Secret {
    let cfg = json!({"auths": {host: {"username": user, "password": password}}});
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "default"},
        "type": "kubernetes.io/dockerconfigjson",
        "data": {".dockerconfigjson": ByteString(serde_json::to_vec(&cfg).unwrap())},
    }))
    .unwrap()
}

/// Polls until the registry has logged `n` manifest GETs of `repo` (the access log line is
/// written as the response finishes), then checks it stays at `n`.
fn expect_manifest_gets(reg: &Registry, repo: &str, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while reg.manifest_gets(repo) < n && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(reg.manifest_gets(repo), n, "registry log:\n{}", reg.log());
}

#[test]
fn pod_pulls_from_a_local_registry_and_runs() {
    if !have_tools("pod_pulls_from_a_local_registry_and_runs") {
        return;
    }
    let Some(dir) = NodeDir::new("pod_pulls_from_a_local_registry_and_runs") else {
        return;
    };
    let reg = Registry::start(Options {
        tls: false,
        auth: false,
        token: false,
    });
    let archive = busybox_archive(dir.tmp.path(), "pulled", "FROM_REGISTRY=yes");
    // gzip layers, OCI manifest.
    reg.push(&archive, "1", "test/pulled:1", &["--dest-compress"]);
    let image = format!("{}/test/pulled:1", reg.host());
    rt().block_on(async {
        let server = Server::start();
        let client = server.client();
        let kubelet = RunningKubelet::start(dir.config("node-reg", Some(&server.kubeconfig)));
        let p = pod(
            "node-reg",
            json!({
                "metadata": {"name": "pulled", "namespace": "default"},
                "spec": {"restartPolicy": "Never",
                    "containers": [{"name": "c", "image": image,
                        "command": ["sh", "-c", "test \"$FROM_REGISTRY\" = yes"]}]}
            }),
        );
        create(&client, &p).await;
        let p = wait_pod(&client, "pulled", 60, "pulled pod finished", |p| {
            matches!(phase(p), "Succeeded" | "Failed").then(|| p.clone())
        })
        .await;
        assert_eq!(
            phase(&p),
            "Succeeded",
            "{:?}",
            p.status.as_ref().map(|s| &s.container_statuses)
        );
        let cs = cstatus(&p, "c").unwrap();
        let stored = ImageStore::open(&dir.data).unwrap().find(&image).unwrap();
        assert_eq!(cs["imageID"].as_str(), Some(stored.config.as_str()));
        kubelet.stop().await;
        dir.cleanup().await;
    });
}

#[test]
fn https_registry_with_ca_and_pull_secrets() {
    let test = "https_registry_with_ca_and_pull_secrets";
    if !have_tools(test) {
        return;
    }
    let Some(dir) = NodeDir::new(test) else {
        return;
    };
    let reg = Registry::start(Options {
        tls: true,
        auth: true,
        token: false,
    });
    let archive = busybox_archive(dir.tmp.path(), "private", "FROM_REGISTRY=yes");
    // Docker schema 2 this time.
    reg.push(&archive, "1", "team/private:1", &["--format", "v2s2"]);
    let host = reg.host();
    let image = format!("{host}/team/private:1");

    rt().block_on(async {
        // Without the registry's CA the certificate is refused (no fallback to HTTP: the
        // server speaks TLS).
        let other = tempfile::tempdir().unwrap();
        let m = manager(other.path());
        let err = m.pull(&image, &Keyring::new()).await.unwrap_err();
        assert!(
            err.to_string().contains("certificate"),
            "unexpected error: {err}"
        );
        // With it, an anonymous pull gets the registry's 401 message.
        let certs = other.path().join("certs.d").join(&host);
        std::fs::create_dir_all(&certs).unwrap();
        std::fs::write(certs.join("ca.crt"), reg.ca_pem.as_ref().unwrap()).unwrap();
        let m = manager(other.path());
        let err = m.pull(&image, &Keyring::new()).await.unwrap_err();
        assert!(
            err.to_string().contains("unauthorized") && err.to_string().contains("UNAUTHORIZED"),
            "unexpected error: {err}"
        );

        // The kubelet: CA in its certs.d, credentials from pull secrets.
        let certs = dir.data.join("certs.d").join(&host);
        std::fs::create_dir_all(&certs).unwrap();
        std::fs::write(certs.join("ca.crt"), reg.ca_pem.as_ref().unwrap()).unwrap();
        let server = Server::start();
        let client = server.client();
        let secrets: Api<Secret> = Api::namespaced(client.clone(), "default");
        secrets
            .create(
                &PostParams::default(),
                &docker_config_secret("regcred", &host, USER, PASSWORD),
            )
            .await
            .unwrap();
        secrets
            .create(
                &PostParams::default(),
                &docker_config_secret("badcred", &host, USER, "wrong"),
            )
            .await
            .unwrap();
        let sa: ServiceAccount = serde_json::from_value(json!({
            "metadata": {"name": "puller", "namespace": "default"},
            "imagePullSecrets": [{"name": "regcred"}]
        }))
        .unwrap();
        Api::<ServiceAccount>::namespaced(client.clone(), "default")
            .create(&PostParams::default(), &sa)
            .await
            .unwrap();
        let kubelet = RunningKubelet::start(dir.config("node-tls", Some(&server.kubeconfig)));
        let mk = |name: &str, extra: serde_json::Value| {
            let mut spec = json!({"restartPolicy": "Never",
                "containers": [{"name": "c", "image": image, "imagePullPolicy": "Always",
                    "command": ["sh", "-c", "test \"$FROM_REGISTRY\" = yes"]}]});
            for (k, v) in extra.as_object().unwrap() {
                spec[k] = v.clone();
            }
            pod(
                "node-tls",
                json!({"metadata": {"name": name, "namespace": "default"}, "spec": spec}),
            )
        };
        // Wrong credentials: ErrImagePull with the registry's refusal, then ImagePullBackOff
        // carrying it.
        create(
            &client,
            &mk("bad", json!({"imagePullSecrets": [{"name": "badcred"}]})),
        )
        .await;
        let mut seen: Vec<(String, String)> = Vec::new();
        wait_pod(
            &client,
            "bad",
            30,
            "ErrImagePull then ImagePullBackOff",
            |p| {
                if let Some(w) = waiting(p)
                    && !seen.contains(&w)
                {
                    seen.push(w);
                }
                (seen.iter().any(|w| w.0 == "ErrImagePull")
                    && seen.iter().any(|w| w.0 == "ImagePullBackOff"))
                .then_some(())
            },
        )
        .await;
        for (reason, msg) in &seen {
            if reason == "ErrImagePull" || reason == "ImagePullBackOff" {
                assert!(
                    msg.contains("unauthorized") && msg.contains(&image),
                    "{reason}: {msg}"
                );
            }
        }
        let bad = seen.iter().find(|w| w.0 == "ImagePullBackOff").unwrap();
        assert!(bad.1.starts_with("Back-off pulling image"), "{}", bad.1);

        // The pod's own secret, then the ServiceAccount's.
        create(
            &client,
            &mk("good", json!({"imagePullSecrets": [{"name": "regcred"}]})),
        )
        .await;
        create(
            &client,
            &mk("via-sa", json!({"serviceAccountName": "puller"})),
        )
        .await;
        for name in ["good", "via-sa"] {
            let p = wait_pod(&client, name, 60, "pod finished", |p| {
                matches!(phase(p), "Succeeded" | "Failed").then(|| p.clone())
            })
            .await;
            assert_eq!(
                phase(&p),
                "Succeeded",
                "{name}: {:?}",
                p.status.as_ref().map(|s| &s.container_statuses)
            );
        }
        kubelet.stop().await;
        dir.cleanup().await;
    });
}

#[test]
fn bearer_token_flow() {
    let test = "bearer_token_flow";
    if !have_tools(test) || !Path::new(kubelet_common::images::BUSYBOX).exists() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let reg = Registry::start(Options {
        tls: false,
        auth: false,
        token: true,
    });
    let archive = busybox_archive(tmp.path(), "tokened", "X=1");
    reg.push(&archive, "1", "team/tokened:1", &[]);
    let image = format!("{}/team/tokened:1", reg.host());
    let issued = reg.token.as_ref().unwrap().issued.clone();
    let before = issued.load(std::sync::atomic::Ordering::SeqCst);
    let m = manager(&tmp.path().join("data"));
    rt().block_on(async {
        // No credentials: the token server's refusal comes back.
        let e = m.pull(&image, &Keyring::new()).await.unwrap_err();
        assert!(
            e.to_string().contains("invalid username or password"),
            "{e}"
        );
        // A wrong credential first, then the right one: the second is used.
        let mut k = Keyring::new();
        k.add_docker_config_json(
            json!({"auths": {reg.host(): {"username": USER, "password": "nope"}}})
                .to_string()
                .as_bytes(),
        )
        .unwrap();
        k.add_docker_config_json(
            json!({"auths": {format!("{}/team", reg.host()): {"username": USER, "password": PASSWORD}}})
                .to_string()
                .as_bytes(),
        )
        .unwrap();
        let (rec, _, fetched) = m.pull(&image, &k).await.unwrap();
        assert!(fetched > 0);
        assert!(m.store().get(&image).unwrap().record == rec);
    });
    assert!(issued.load(std::sync::atomic::Ordering::SeqCst) > before);
}

#[test]
fn tampered_blob_is_refused() {
    let test = "tampered_blob_is_refused";
    if !have_tools(test) || !Path::new(kubelet_common::images::BUSYBOX).exists() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let reg = Registry::start(Options {
        tls: false,
        auth: false,
        token: false,
    });
    let archive = busybox_archive(tmp.path(), "tampered", "X=1");
    reg.push(&archive, "1", "test/tampered:1", &[]);
    // The layer is the largest blob; flip one byte, keeping its size.
    let mut largest = (0u64, String::new());
    let root = reg
        .dir
        .path()
        .join("storage/docker/registry/v2/blobs/sha256");
    for prefix in std::fs::read_dir(&root).unwrap() {
        for b in std::fs::read_dir(prefix.unwrap().path()).unwrap() {
            let b = b.unwrap();
            let hex = b.file_name().to_string_lossy().into_owned();
            let size = std::fs::metadata(reg.blob_file(&hex)).unwrap().len();
            if size > largest.0 {
                largest = (size, hex);
            }
        }
    }
    let file = reg.blob_file(&largest.1);
    let mut bytes = std::fs::read(&file).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&file, &bytes).unwrap();

    let data = tmp.path().join("data");
    let m = manager(&data);
    let image = format!("{}/test/tampered:1", reg.host());
    let err = rt().block_on(m.pull(&image, &Keyring::new())).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("failed verification") && msg.contains(&largest.1),
        "unexpected error: {msg}"
    );
    // Nothing of it entered the store: no image, no such blob, no staging left.
    let store = ImageStore::open(&data).unwrap();
    assert!(store.list().unwrap().is_empty());
    let d = node::image::oci::Digest::parse(&format!("sha256:{}", largest.1)).unwrap();
    assert!(!store.has_blob(&d));
    assert_eq!(
        std::fs::read_dir(store.root().join("tmp")).unwrap().count(),
        0
    );
}

#[test]
fn pull_policies_and_concurrent_pulls() {
    let test = "pull_policies_and_concurrent_pulls";
    if !have_tools(test) || !Path::new(kubelet_common::images::BUSYBOX).exists() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let reg = Registry::start(Options {
        tls: false,
        auth: false,
        token: false,
    });
    let archive = busybox_archive(tmp.path(), "policy", "X=1");
    reg.push(&archive, "1", "test/policy:1", &[]);
    let image = format!("{}/test/policy:1", reg.host());
    let m = Arc::new(manager(&tmp.path().join("data")));
    let none = Keyring::new();
    rt().block_on(async {
        // Never, missing: ErrImageNeverPull without asking the registry.
        let e = m
            .ensure(&image, PullPolicy::Never, &none)
            .await
            .unwrap_err();
        assert!(matches!(e, EnsureError::NeverPull { .. }), "{e}");
        assert_eq!(e.reason(), "ErrImageNeverPull");
        // Two pods want it at once: one pull.
        let (a, b) = tokio::join!(
            m.ensure(&image, PullPolicy::IfNotPresent, &none),
            m.ensure(&image, PullPolicy::IfNotPresent, &none)
        );
        let (a, b) = (a.unwrap(), b.unwrap());
        assert_eq!(a.record, b.record);
        assert!(a.pulled.as_ref().unwrap().bytes_fetched > 0);
        expect_manifest_gets(&reg, "test/policy", 1);
        // Present + IfNotPresent: the registry is not asked.
        let c = m
            .ensure(&image, PullPolicy::IfNotPresent, &none)
            .await
            .unwrap();
        assert!(c.pulled.is_none());
        assert_eq!(
            c.events(&image)[0].1,
            format!("Container image \"{image}\" already present on machine")
        );
        expect_manifest_gets(&reg, "test/policy", 1);
        // Always: the manifest is resolved again, no blob is fetched again.
        let d = m.ensure(&image, PullPolicy::Always, &none).await.unwrap();
        assert_eq!(d.pulled.as_ref().unwrap().bytes_fetched, 0);
        assert_eq!(d.record, a.record);
        expect_manifest_gets(&reg, "test/policy", 2);
        // A tag the registry does not have: not found, with the registry's code.
        let e = m
            .ensure(
                &format!("{}/test/policy:nope", reg.host()),
                PullPolicy::IfNotPresent,
                &none,
            )
            .await
            .unwrap_err();
        assert_eq!(e.reason(), "ErrImagePull");
        assert!(e.to_string().contains("MANIFEST_UNKNOWN"), "{e}");
        // A pinned digest resolves to the same image.
        let pinned = format!("{}/test/policy@{}", reg.host(), a.record.manifest);
        let p = m
            .ensure(&pinned, PullPolicy::IfNotPresent, &none)
            .await
            .unwrap();
        assert_eq!(p.record.config, a.record.config);
    });
}

#[test]
fn gc_respects_thresholds_and_min_age() {
    // The store only: no registry or root needed.
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let store = ImageStore::open(&data).unwrap();
    for (name, body) in [("a", &b"a\n"[..]), ("b", b"b\n")] {
        let layer = kubelet_common::images::layer_tar(&[kubelet_common::images::Entry::File(
            "f", body, 0o644,
        )]);
        let layout = kubelet_common::images::oci_layout(
            &tmp.path().join(name),
            &format!("kubeshard.test/{name}:1"),
            &[layer],
            json!({}),
        );
        store.import(&layout).unwrap();
    }
    let ids: Vec<String> = store
        .list()
        .unwrap()
        .iter()
        .map(|r| r.config.to_string())
        .collect();
    let policy = |high, min_age| ImageGcPolicy {
        high_threshold_percent: high,
        low_threshold_percent: 0,
        min_age,
        period: Duration::from_secs(3600),
    };
    rt().block_on(async {
        // Disabled (100%): nothing.
        let m = ImageManager::new(
            store.clone(),
            RegistryConfig::new(&data),
            policy(100, Duration::ZERO),
        );
        let r = m.garbage_collect(&HashSet::new()).await.unwrap();
        assert!(r.deleted.is_empty());
        assert_eq!(r.wanted, 0);
        // Above the threshold but every image younger than the minimum age: nothing.
        let m = ImageManager::new(
            store.clone(),
            RegistryConfig::new(&data),
            policy(0, Duration::from_secs(3600)),
        );
        let r = m.garbage_collect(&HashSet::new()).await.unwrap();
        assert!(r.wanted > 0 && r.deleted.is_empty(), "{r:?}");
        // No minimum age: the unused image goes, the used one stays.
        let m = ImageManager::new(
            store.clone(),
            RegistryConfig::new(&data),
            policy(0, Duration::ZERO),
        );
        let used: HashSet<String> = [ids[0].clone()].into();
        let r = m.garbage_collect(&used).await.unwrap();
        assert_eq!(r.deleted.len(), 1, "{r:?}");
        assert!(r.freed > 0);
        let left = store.list().unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].config.as_str(), ids[0]);
        assert!(!store.has_blob(&node::image::oci::Digest::parse(&ids[1]).unwrap()));
    });
}

#[test]
fn kubelet_gc_deletes_unused_images_and_keeps_used_ones() {
    let test = "kubelet_gc_deletes_unused_images_and_keeps_used_ones";
    let Some(dir) = NodeDir::new(test) else {
        return;
    };
    let store = ImageStore::open(&dir.data).unwrap();
    for (name, env) in [("unused", "U=1"), ("exited", "E=1")] {
        let layout = kubelet_common::images::oci_layout(
            &dir.tmp.path().join(name),
            &format!("kubeshard.test/{name}:1"),
            &[kubelet_common::images::busybox_layer()],
            json!({"Env": ["PATH=/bin", env], "Cmd": ["sh"]}),
        );
        store.import(&layout).unwrap();
    }
    let id = |name: &str| store.find(name).map(|r| r.config);
    let (running_id, unused_id, exited_id) = (
        id(IMAGE).unwrap(),
        id("kubeshard.test/unused:1").unwrap(),
        id("kubeshard.test/exited:1").unwrap(),
    );
    rt().block_on(async {
        let server = Server::start();
        let client = server.client();
        // First without GC, until the containers exist.
        let mut cfg = dir.config("node-gc", Some(&server.kubeconfig));
        cfg.image_gc.high_threshold_percent = 100;
        let kubelet = RunningKubelet::start(cfg);
        create(
            &client,
            &sh_pod("node-gc", "runner", "sleep 3600", "Always"),
        )
        .await;
        let mut exited = sh_pod("node-gc", "exited", "true", "Never");
        exited.spec.as_mut().unwrap().containers[0].image = Some("kubeshard.test/exited:1".into());
        create(&client, &exited).await;
        wait_pod(&client, "runner", 60, "runner Running", |p| {
            (phase(p) == "Running").then_some(())
        })
        .await;
        wait_pod(&client, "exited", 60, "exited Succeeded", |p| {
            (phase(p) == "Succeeded").then_some(())
        })
        .await;
        kubelet.stop().await;
        // Then with GC at every opportunity (threshold 0%, no minimum age).
        let mut cfg = dir.config("node-gc", Some(&server.kubeconfig));
        cfg.image_gc = ImageGcPolicy {
            high_threshold_percent: 0,
            low_threshold_percent: 0,
            min_age: Duration::ZERO,
            period: Duration::from_millis(200),
        };
        let kubelet = RunningKubelet::start(cfg);
        let deadline = Instant::now() + Duration::from_secs(20);
        while store.find("kubeshard.test/unused:1").is_ok() {
            assert!(
                Instant::now() < deadline,
                "the unused image was not collected"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Two more rounds: the used images stay.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let ids: Vec<_> = store
            .list()
            .unwrap()
            .into_iter()
            .map(|r| r.config)
            .collect();
        assert!(
            ids.contains(&running_id),
            "the running pod's image was deleted"
        );
        assert!(
            ids.contains(&exited_id),
            "the exited container's image was deleted"
        );
        assert!(!ids.contains(&unused_id));
        // Its config blob is gone; the layer it shares with the others is not.
        assert!(!store.has_blob(&unused_id));
        let img = store.get(IMAGE).unwrap();
        assert!(store.has_blob(&img.layers[0].digest));
        assert!(store.layers_dir().join(img.layers[0].digest.hex()).is_dir());
        let p = Api::<k8s_openapi::api::core::v1::Pod>::namespaced(client.clone(), "default")
            .get("runner")
            .await
            .unwrap();
        assert_eq!(phase(&p), "Running");
        kubelet.stop().await;
        dir.cleanup().await;
    });
}
