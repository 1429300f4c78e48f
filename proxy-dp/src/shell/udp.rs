//! UDP: one flow per client address on a frontend, forwarded through a connected socket to
//! the chosen backend; replies return through the frontend socket; idle flows expire.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::net::UdpSocket;
use tokio::time::Instant;

use super::metrics::ServiceMetrics;
use super::{ShardState, shard_state};
use crate::core::Frontend;

/// The largest datagram forwarded.
const MAX_DATAGRAM: usize = 65_535;

struct Flow {
    up: UdpSocket,
    backend: SocketAddr,
    last: Cell<Instant>,
}

type Flows = Rc<RefCell<HashMap<SocketAddr, Rc<Flow>>>>;

/// Serves one shard's socket of UDP frontend `f` until aborted.
pub(crate) async fn serve(f: Frontend, sock: UdpSocket) {
    let Some(st) = shard_state() else {
        return;
    };
    let sock = Rc::new(sock);
    let flows: Flows = Rc::new(RefCell::new(HashMap::new()));
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let Ok((n, client)) = sock.recv_from(&mut buf).await else {
            continue;
        };
        let now = Instant::now();
        let existing = flows.borrow().get(&client).cloned();
        let flow = match existing {
            Some(flow) => flow,
            None => match open_flow(&st, f, client, now) {
                Some((flow, m)) => {
                    let flow = Rc::new(flow);
                    flows.borrow_mut().insert(client, Rc::clone(&flow));
                    tokio::task::spawn_local(replies(
                        Rc::clone(&st),
                        f,
                        Rc::clone(&sock),
                        Rc::clone(&flows),
                        client,
                        Rc::clone(&flow),
                        m,
                    ));
                    flow
                }
                None => continue,
            },
        };
        flow.last.set(now);
        if flow.up.send(&buf[..n]).await.is_ok()
            && let Some(r) = st.routes.borrow().get(&f)
        {
            r.metrics.bytes.fetch_add(n as u64, Ordering::Relaxed);
        }
    }
}

fn open_flow(
    st: &ShardState,
    f: Frontend,
    client: SocketAddr,
    now: Instant,
) -> Option<(Flow, Arc<ServiceMetrics>)> {
    if st.flows.get() >= st.settings.max_flows {
        st.settings
            .metrics
            .flow_table_full
            .fetch_add(1, Ordering::Relaxed);
        return None;
    }
    let mut routes = st.routes.borrow_mut();
    let r = routes.get_mut(&f)?;
    let Some(backend) = r.balancer.pick(client, now.into_std(), &[]) else {
        r.metrics.refused.fetch_add(1, Ordering::Relaxed);
        return None;
    };
    let local: SocketAddr = match backend.ip() {
        IpAddr::V4(_) => SocketAddr::from(([0, 0, 0, 0], 0)),
        IpAddr::V6(_) => SocketAddr::from(([0u16; 8], 0)),
    };
    let up = std::net::UdpSocket::bind(local)
        .and_then(|s| s.connect(backend).map(|()| s))
        .and_then(|s| s.set_nonblocking(true).map(|()| s))
        .and_then(UdpSocket::from_std);
    let Ok(up) = up else {
        r.balancer.release(backend);
        r.metrics.connect_errors.fetch_add(1, Ordering::Relaxed);
        return None;
    };
    st.flows.set(st.flows.get() + 1);
    r.metrics.active.fetch_add(1, Ordering::Relaxed);
    r.metrics.total.fetch_add(1, Ordering::Relaxed);
    Some((
        Flow {
            up,
            backend,
            last: Cell::new(now),
        },
        Arc::clone(&r.metrics),
    ))
}

/// Backend → client for one flow, until the flow is idle for the idle timeout.
async fn replies(
    st: Rc<ShardState>,
    f: Frontend,
    sock: Rc<UdpSocket>,
    flows: Flows,
    client: SocketAddr,
    flow: Rc<Flow>,
    m: Arc<ServiceMetrics>,
) {
    let idle = st.settings.udp_idle;
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let deadline = flow.last.get() + idle;
        if Instant::now() >= deadline {
            break;
        }
        match tokio::time::timeout_at(deadline, flow.up.recv(&mut buf)).await {
            Ok(Ok(n)) => {
                flow.last.set(Instant::now());
                if sock.send_to(&buf[..n], client).await.is_ok() {
                    m.bytes.fetch_add(n as u64, Ordering::Relaxed);
                }
            }
            // ICMP port unreachable from the backend and the like: keep the flow until idle.
            Ok(Err(_)) => tokio::time::sleep(std::time::Duration::from_millis(1)).await,
            Err(_) => {} // deadline passed; the loop re-checks `last`
        }
    }
    flows.borrow_mut().remove(&client);
    st.flows.set(st.flows.get().saturating_sub(1));
    st.settings
        .metrics
        .flows_expired
        .fetch_add(1, Ordering::Relaxed);
    m.active.fetch_sub(1, Ordering::Relaxed);
    if let Some(r) = st.routes.borrow_mut().get_mut(&f) {
        r.balancer.release(flow.backend);
    }
}
