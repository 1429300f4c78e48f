//! The etcd v3 face over the durable engine, as `kubeshard store` runs it, in a binary that
//! builds from this crate alone (benches iterate on the store without relinking the whole
//! `kubeshard` binary): `KUBESHARD_BIN=target/release/examples/store_face` for
//! `etcd_vs_store`.
//!
//! Usage: `store_face store --data-dir DIR --listen-client-urls http://127.0.0.1:PORT`
//! (the same arguments as `kubeshard store`; the leading `store` is optional).

use std::path::PathBuf;
use std::sync::Arc;

use store::etcd_face;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    // As `kubeshard` does (src/main.rs): no transparent huge pages under mimalloc.
    let _ = nix::sys::prctl::set_thp_disable(true);
    let mut data_dir: Option<PathBuf> = None;
    let mut urls = vec!["http://127.0.0.1:2379".to_string()];
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "store" => {}
            "--data-dir" => data_dir = args.next().map(PathBuf::from),
            "--listen-client-urls" => {
                urls = args
                    .next()
                    .map(|v| v.split(',').map(str::to_string).collect())
                    .unwrap_or_default();
            }
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    let data_dir = data_dir.ok_or("--data-dir is required")?;
    std::fs::create_dir_all(&data_dir)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let engine = store::Engine::open(store::EngineConfig::durable(data_dir.join("store")))?;
        let backend: Arc<dyn store::Backend> = engine.clone();
        let config = etcd_face::FaceConfig::from_seed(&data_dir.to_string_lossy(), urls.clone());
        etcd_face::serve_urls(backend, &urls, config, etcd_face::shutdown_signal()).await?;
        engine.close();
        Ok(())
    })
}
