//! Reflectors and informers: a local cache ([`Store`]) of one resource kept up to date by
//! listing and then watching, with handlers called on every change.
//!
//! [`Informer::run`] lists in pages of [`InformerOptions::page_size`], replaces the store,
//! then watches from the list's resourceVersion with bookmarks on. It resumes a dropped
//! watch from the newest resourceVersion it saw (event or bookmark); on 410 Gone/Expired it
//! re-lists and reconciles the store against the new list, emitting `Deleted` for objects
//! that vanished meanwhile and `Added`/`Modified` for the rest, so handlers stay
//! level-correct. Failures back off exponentially with jitter, from
//! [`InformerOptions::backoff_min`] to [`InformerOptions::backoff_max`].

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::StreamExt;
use tokio::time::Instant;

use super::api::{Api, ApiObject};
use super::params::ListParams;
use super::watch::WatchEvent;

/// Where an object is: namespace (empty for cluster-scoped objects) and name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey {
    /// Namespace, `""` for cluster-scoped objects.
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl ObjectKey {
    /// The key of `obj`.
    pub fn of<K: ApiObject>(obj: &K) -> Self {
        let m = obj.meta();
        Self {
            namespace: m.namespace.clone().unwrap_or_default(),
            name: m.name.clone().unwrap_or_default(),
        }
    }
}

impl std::fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.namespace.is_empty() {
            f.write_str(&self.name)
        } else {
            write!(f, "{}/{}", self.namespace, self.name)
        }
    }
}

/// A change delivered to an informer's handler. The store already reflects it.
#[derive(Debug, Clone)]
pub enum Event<K> {
    /// A new object (or one that appeared across a re-list).
    Added(Arc<K>),
    /// A changed object, its new state.
    Modified(Arc<K>),
    /// A deleted object, its last known state.
    Deleted(Arc<K>),
    /// The store holds a complete list (after the first list and after each re-list).
    Synced,
}

struct StoreInner<K> {
    map: RwLock<HashMap<ObjectKey, Arc<K>>>,
    synced: tokio::sync::watch::Sender<bool>,
}

/// A read-only cache of one resource, written by its [`Informer`]. Cheap to clone.
pub struct Store<K> {
    inner: Arc<StoreInner<K>>,
}

impl<K> Clone for Store<K> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<K> std::fmt::Debug for Store<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("synced", &*self.inner.synced.borrow())
            .finish()
    }
}

impl<K: ApiObject> Default for Store<K> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K: ApiObject> Store<K> {
    /// An empty, unsynced store.
    pub fn new() -> Self {
        Self {
            inner: Arc::new(StoreInner {
                map: RwLock::new(HashMap::new()),
                synced: tokio::sync::watch::Sender::new(false),
            }),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<ObjectKey, Arc<K>>> {
        self.inner
            .map
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<ObjectKey, Arc<K>>> {
        self.inner
            .map
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The object `namespace/name` (`""` namespace for cluster-scoped objects).
    pub fn get(&self, namespace: &str, name: &str) -> Option<Arc<K>> {
        self.get_key(&ObjectKey {
            namespace: namespace.to_string(),
            name: name.to_string(),
        })
    }

    /// The object at `key`.
    pub fn get_key(&self, key: &ObjectKey) -> Option<Arc<K>> {
        self.read().get(key).cloned()
    }

    /// Every object (in no particular order).
    pub fn list(&self) -> Vec<Arc<K>> {
        self.read().values().cloned().collect()
    }

    /// Every object for which `f` holds.
    pub fn filter(&self, mut f: impl FnMut(&K) -> bool) -> Vec<Arc<K>> {
        self.read().values().filter(|o| f(o)).cloned().collect()
    }

    /// Number of objects.
    pub fn len(&self) -> usize {
        self.read().len()
    }

    /// True when the store holds no object.
    pub fn is_empty(&self) -> bool {
        self.read().is_empty()
    }

    /// True once the first list has been stored.
    pub fn has_synced(&self) -> bool {
        *self.inner.synced.borrow()
    }

    /// Waits until the first list has been stored (wrap in a timeout to bound it).
    pub async fn wait_until_synced(&self) {
        let mut rx = self.inner.synced.subscribe();
        // The sender lives as long as the store, so this only ends once synced.
        let _ = rx.wait_for(|s| *s).await;
    }

    /// Inserts or replaces `obj`; `Added` or `Modified` depending on what was there.
    fn apply(&self, obj: K) -> Event<K> {
        let obj = Arc::new(obj);
        let prev = self.write().insert(ObjectKey::of(&*obj), obj.clone());
        match prev {
            Some(_) => Event::Modified(obj),
            None => Event::Added(obj),
        }
    }

    /// Removes `obj`; `Deleted` with the event's object (the final state).
    fn remove(&self, obj: K) -> Event<K> {
        self.write().remove(&ObjectKey::of(&obj));
        Event::Deleted(Arc::new(obj))
    }

    /// Replaces the whole content with `items` and returns the events that take a handler
    /// from the old content to the new one.
    fn replace(&self, items: Vec<K>) -> Vec<Event<K>> {
        let mut new = HashMap::with_capacity(items.len());
        for o in items {
            new.insert(ObjectKey::of(&o), Arc::new(o));
        }
        let mut events = Vec::new();
        // One write lock for the swap and the diff: readers never see a half-replaced store.
        let mut guard = self.write();
        let mut old = std::mem::replace(&mut *guard, new);
        for (key, obj) in guard.iter() {
            match old.remove(key) {
                None => events.push(Event::Added(obj.clone())),
                Some(prev) if prev.meta().uid != obj.meta().uid => {
                    // Same name, another object: the old one was deleted meanwhile.
                    events.push(Event::Deleted(prev));
                    events.push(Event::Added(obj.clone()));
                }
                Some(prev) if prev.meta().resource_version != obj.meta().resource_version => {
                    events.push(Event::Modified(obj.clone()));
                }
                Some(_) => {}
            }
        }
        drop(guard);
        events.extend(old.into_values().map(Event::Deleted));
        events
    }

    fn set_synced(&self) {
        self.inner.synced.send_replace(true);
    }
}

/// Tuning of an [`Informer`].
#[derive(Debug, Clone)]
pub struct InformerOptions {
    /// Objects per list page.
    pub page_size: u32,
    /// Most pages of one list (bounds the list; 500 x 100,000 = 50 M objects).
    pub max_pages: usize,
    /// First retry delay after a failure.
    pub backoff_min: Duration,
    /// Largest retry delay.
    pub backoff_max: Duration,
    /// Each watch asks the server to end it after a random time in this range (seconds),
    /// as upstream reflectors do, so watches spread over apiservers.
    pub watch_timeout: (u32, u32),
}

impl Default for InformerOptions {
    fn default() -> Self {
        Self {
            page_size: 500,
            max_pages: 100_000,
            backoff_min: Duration::from_millis(200),
            backoff_max: Duration::from_secs(30),
            watch_timeout: (300, 600),
        }
    }
}

/// Exponential backoff with jitter.
#[derive(Debug)]
pub(crate) struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub(crate) fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max: max.max(min),
            next: min,
        }
    }

    /// The next delay: the current step scaled by a random factor in [0.5, 1.5), capped.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let d = self.next.mul_f64(0.5 + random_unit()).min(self.max);
        self.next = (self.next * 2).min(self.max);
        d
    }

    pub(crate) fn reset(&mut self) {
        self.next = self.min;
    }
}

/// A random number in [0, 1) (std's randomly keyed SipHash; jitter needs no more).
pub(crate) fn random_unit() -> f64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

/// Keeps a [`Store`] in sync with the server and calls a handler on every change.
pub struct Informer<K> {
    api: Api<K>,
    lp: ListParams,
    store: Store<K>,
    opts: InformerOptions,
}

/// Why a watch phase ended.
enum WatchEnd {
    /// 410: the resourceVersion is gone; re-list.
    Relist,
    /// A failure; retry the watch after a backoff.
    Failed,
    /// The server ended the stream normally; re-watch now.
    Ended,
}

impl<K: ApiObject> Informer<K> {
    /// An informer over `api` with `lp`'s selectors (its `limit` and `continue` are
    /// ignored: the informer pages by itself), and the store it fills.
    pub fn new(api: Api<K>, lp: ListParams) -> (Store<K>, Self) {
        let store = Store::new();
        (
            store.clone(),
            Self {
                api,
                lp,
                store,
                opts: InformerOptions::default(),
            },
        )
    }

    /// Replaces the options.
    #[must_use]
    pub fn with_options(mut self, opts: InformerOptions) -> Self {
        self.opts = opts;
        self
    }

    /// The store this informer fills.
    pub fn store(&self) -> &Store<K> {
        &self.store
    }

    /// Lists every page; `(items, resourceVersion)`.
    async fn list(&self) -> super::Result<(Vec<K>, String)> {
        let mut lp = self.lp.clone();
        lp.limit = Some(self.opts.page_size.max(1));
        lp.continue_token = None;
        let l = self.api.list_all(&lp, self.opts.max_pages).await?;
        Ok((l.items, l.resource_version))
    }

    /// Runs forever (abort the task to stop), calling `handler` after each store change.
    pub async fn run<F>(self, mut handler: F)
    where
        F: FnMut(Event<K>) + Send,
    {
        let mut backoff = Backoff::new(self.opts.backoff_min, self.opts.backoff_max);
        loop {
            let (items, mut rv) = match self.list().await {
                Ok(l) => l,
                Err(e) => {
                    let d = backoff.next_delay();
                    tracing::warn!(
                        resource = %self.api.resource().plural,
                        "informer list failed, retrying in {d:?}: {e}"
                    );
                    tokio::time::sleep(d).await;
                    continue;
                }
            };
            for ev in self.store.replace(items) {
                handler(ev);
            }
            self.store.set_synced();
            handler(Event::Synced);
            backoff.reset();
            loop {
                let started = Instant::now();
                let (end, progressed) = self.watch(&mut rv, &mut handler).await;
                if progressed {
                    backoff.reset();
                }
                match end {
                    WatchEnd::Relist => break,
                    // A stream that ends at once without news is a failure in disguise.
                    WatchEnd::Ended if progressed || started.elapsed() > Duration::from_secs(1) => {
                    }
                    WatchEnd::Ended | WatchEnd::Failed => {
                        tokio::time::sleep(backoff.next_delay()).await;
                    }
                }
            }
        }
    }

    /// One watch from `rv`, applying events to the store; `(why it ended, whether any event
    /// or bookmark arrived)`.
    async fn watch<F: FnMut(Event<K>)>(
        &self,
        rv: &mut String,
        handler: &mut F,
    ) -> (WatchEnd, bool) {
        let (lo, hi) = self.opts.watch_timeout;
        let span = hi.saturating_sub(lo);
        let timeout = lo + (random_unit() * f64::from(span)) as u32;
        let wp = self.lp.to_watch().bookmarks(true).timeout(timeout.max(1));
        let mut stream = match self.api.watch(&wp, rv).await {
            Ok(s) => s,
            Err(e) if e.is_gone() => return (WatchEnd::Relist, false),
            Err(e) => {
                tracing::debug!(resource = %self.api.resource().plural, "watch failed: {e}");
                return (WatchEnd::Failed, false);
            }
        };
        let mut progressed = false;
        while let Some(item) = stream.next().await {
            let ev = match item {
                Ok(WatchEvent::Added(o) | WatchEvent::Modified(o)) => {
                    if let Some(v) = o.meta().resource_version.clone() {
                        *rv = v;
                    }
                    self.store.apply(o)
                }
                Ok(WatchEvent::Deleted(o)) => {
                    if let Some(v) = o.meta().resource_version.clone() {
                        *rv = v;
                    }
                    self.store.remove(o)
                }
                Ok(WatchEvent::Bookmark {
                    resource_version, ..
                }) => {
                    if !resource_version.is_empty() {
                        *rv = resource_version;
                    }
                    progressed = true;
                    continue;
                }
                Ok(WatchEvent::Error(st)) if st.code == 410 => {
                    return (WatchEnd::Relist, progressed);
                }
                Ok(WatchEvent::Error(st)) => {
                    tracing::debug!(resource = %self.api.resource().plural, "watch error: {} {}", st.code, st.message);
                    return (WatchEnd::Failed, progressed);
                }
                Err(e) => {
                    tracing::debug!(resource = %self.api.resource().plural, "watch stream failed: {e}");
                    return (WatchEnd::Failed, progressed);
                }
            };
            progressed = true;
            handler(ev);
        }
        (WatchEnd::Ended, progressed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ConfigMap;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn cm(name: &str, uid: &str, rv: &str) -> ConfigMap {
        ConfigMap {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("ns".into()),
                uid: Some(uid.into()),
                resource_version: Some(rv.into()),
                ..ObjectMeta::default()
            },
            ..ConfigMap::default()
        }
    }

    fn names(evs: &[Event<ConfigMap>]) -> Vec<String> {
        let mut v: Vec<String> = evs
            .iter()
            .map(|e| match e {
                Event::Added(o) => format!("+{}", o.metadata.name.as_deref().unwrap_or("")),
                Event::Modified(o) => format!("~{}", o.metadata.name.as_deref().unwrap_or("")),
                Event::Deleted(o) => format!("-{}", o.metadata.name.as_deref().unwrap_or("")),
                Event::Synced => "synced".into(),
            })
            .collect();
        v.sort();
        v
    }

    #[test]
    fn relist_reconciles() {
        let s: Store<ConfigMap> = Store::new();
        let evs = s.replace(vec![
            cm("a", "1", "1"),
            cm("b", "2", "2"),
            cm("c", "3", "3"),
        ]);
        assert_eq!(names(&evs), ["+a", "+b", "+c"]);
        // b changed, c deleted, d added, a unchanged; e recreated under the same name.
        s.apply(cm("e", "4", "4"));
        let evs = s.replace(vec![
            cm("a", "1", "1"),
            cm("b", "2", "7"),
            cm("d", "5", "8"),
            cm("e", "6", "9"),
        ]);
        assert_eq!(names(&evs), ["+d", "+e", "-c", "-e", "~b"]);
        assert_eq!(s.len(), 4);
        assert_eq!(s.get("ns", "e").unwrap().metadata.uid.as_deref(), Some("6"));
        assert!(s.get("ns", "c").is_none());
    }

    #[test]
    fn backoff_is_bounded() {
        let mut b = Backoff::new(Duration::from_millis(200), Duration::from_secs(30));
        let first = b.next_delay();
        assert!(first >= Duration::from_millis(100) && first < Duration::from_millis(300));
        for _ in 0..20 {
            assert!(b.next_delay() <= Duration::from_secs(30));
        }
        b.reset();
        assert!(b.next_delay() < Duration::from_millis(300));
    }
}
