//! Serialize-once watch fan-out: one store watch per resource, its events encoded once and
//! shared (`Bytes`) by every watcher of that resource.
//!
//! A [`Hub`] holds one store watch over a resource's key prefix, a bounded history of recent
//! events (so a watcher can join at a recent `resourceVersion` without a store read) and a
//! bounded broadcast ring. Each [`SharedEvent`] encodes its `ADDED`/`MODIFIED`/`DELETED` JSON
//! line lazily, once, whichever watcher asks first; the rest clone the `Bytes`.
//!
//! A watcher that falls more than [`BROADCAST_EVENTS`] behind is cut off (410, it re-lists);
//! it never slows the hub or other watchers. Watches selected by an indexed field (a
//! kubelet's `spec.nodeName=X`) bypass the hub and use the store's indexed routing instead,
//! so 10,000 node watchers do not each inspect every pod event.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, OnceLock};

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use store::{KeyValue, RangeEnd, Revision, WatchEvent, WatchRequest};
use tokio::sync::broadcast;

/// Events a watcher may lag behind before it is cut off with a 410.
pub(crate) const BROADCAST_EVENTS: usize = 4096;
/// Recent events kept for watchers joining at an older resourceVersion.
pub(crate) const HISTORY_EVENTS: usize = 10_000;

/// One store event, with its JSON lines encoded on first use.
#[derive(Debug)]
pub(crate) struct SharedEvent {
    pub(crate) revision: Revision,
    /// The new value (puts) or the last value (deletes).
    pub(crate) kv: Option<KeyValue>,
    pub(crate) prev: Option<KeyValue>,
    pub(crate) deleted: bool,
    lines: [OnceLock<Bytes>; 3],
}

impl SharedEvent {
    /// Wraps a store event (`None` for progress notifications).
    pub(crate) fn from_store(ev: WatchEvent) -> Option<Self> {
        let (revision, kv, prev, deleted) = match ev {
            WatchEvent::Put { kv, prev_kv } => (kv.mod_revision, Some(kv), prev_kv, false),
            WatchEvent::Delete {
                revision, prev_kv, ..
            } => (revision, prev_kv.clone(), prev_kv, true),
            WatchEvent::Progress(_) => return None,
        };
        Some(Self {
            revision,
            kv,
            prev,
            deleted,
            lines: Default::default(),
        })
    }

    /// The event as a JSON line of type `ty` (0 ADDED, 1 MODIFIED, 2 DELETED), encoded once.
    pub(crate) fn line(&self, ty: usize, encode: impl FnOnce() -> Bytes) -> Bytes {
        self.lines[ty.min(2)].get_or_init(encode).clone()
    }
}

/// What a watcher receives.
#[derive(Debug, Clone)]
pub(crate) enum HubItem {
    Event(Arc<SharedEvent>),
    /// Every event up to this revision was sent.
    Progress(Revision),
}

struct State {
    history: VecDeque<Arc<SharedEvent>>,
    /// Events with a revision above this are not yet known to the hub.
    position: Revision,
    /// The hub saw everything after this revision.
    start: Revision,
    alive: bool,
}

/// One resource's shared watch.
pub(crate) struct Hub {
    state: Mutex<State>,
    tx: broadcast::Sender<HubItem>,
}

/// A watcher's subscription: history to replay, then the live receiver.
pub(crate) struct Subscription {
    pub(crate) replay: Vec<Arc<SharedEvent>>,
    pub(crate) rx: broadcast::Receiver<HubItem>,
}

impl Hub {
    /// Joins after revision `after`; `None` if the hub cannot serve it (too old or dead).
    pub(crate) fn subscribe(&self, after: Revision) -> Option<Subscription> {
        let st = self.state.lock().ok()?;
        if !st.alive || after < st.start {
            return None;
        }
        let replay = st
            .history
            .iter()
            .filter(|e| e.revision > after)
            .cloned()
            .collect();
        Some(Subscription {
            replay,
            rx: self.tx.subscribe(),
        })
    }
}

/// The hubs of one server, by key prefix.
#[derive(Default)]
pub(crate) struct Hubs {
    hubs: Mutex<HashMap<Bytes, Arc<Hub>>>,
}

impl Hubs {
    /// The live hub for `prefix`, started (watching after the store's current revision) if
    /// there is none.
    pub(crate) async fn get(
        &self,
        backend: &Arc<dyn store::Backend>,
        prefix: Bytes,
    ) -> Result<Arc<Hub>, store::StoreError> {
        if let Ok(map) = self.hubs.lock()
            && let Some(h) = map.get(&prefix)
            && h.state.lock().is_ok_and(|s| s.alive)
        {
            return Ok(h.clone());
        }
        let current = backend.status().await?.revision;
        let stream = backend
            .watch(WatchRequest {
                key: prefix.clone(),
                range_end: RangeEnd::Prefix,
                start_revision: Some(Revision(current.0 + 1)),
                filter: Default::default(),
                prev_kv: true,
                progress_notify: true,
            })
            .await?;
        let (tx, _) = broadcast::channel(BROADCAST_EVENTS);
        let hub = Arc::new(Hub {
            state: Mutex::new(State {
                history: VecDeque::new(),
                position: current,
                start: current,
                alive: true,
            }),
            tx,
        });
        {
            let mut map = self
                .hubs
                .lock()
                .map_err(|_| store::StoreError::Unavailable("hub registry poisoned".into()))?;
            // Another request may have raced us: keep the first live one.
            if let Some(h) = map.get(&prefix)
                && h.state.lock().is_ok_and(|s| s.alive)
            {
                return Ok(h.clone());
            }
            map.insert(prefix, hub.clone());
        }
        let h = hub.clone();
        tokio::spawn(async move {
            let mut stream = stream;
            while let Some(batch) = stream.next().await {
                let Ok(events) = batch else { break };
                let Ok(mut st) = h.state.lock() else { break };
                for ev in events {
                    let rev = ev.revision();
                    match SharedEvent::from_store(ev) {
                        Some(e) => {
                            let e = Arc::new(e);
                            st.history.push_back(e.clone());
                            if st.history.len() > HISTORY_EVENTS
                                && let Some(old) = st.history.pop_front()
                            {
                                st.start = old.revision;
                            }
                            let _ = h.tx.send(HubItem::Event(e));
                        }
                        None => {
                            let _ = h.tx.send(HubItem::Progress(rev));
                        }
                    }
                    st.position = st.position.max(rev);
                }
            }
            // The store watch ended (compaction, overload, shutdown): watchers re-watch.
            if let Ok(mut st) = h.state.lock() {
                st.alive = false;
            }
        });
        Ok(hub)
    }
}

/// `prefix + raw + "}\n"`.
pub(crate) fn frame(prefix: &[u8], raw: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(prefix.len() + raw.len() + 2);
    out.extend_from_slice(prefix);
    out.extend_from_slice(raw);
    out.extend_from_slice(b"}\n");
    out.freeze()
}
