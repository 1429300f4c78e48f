//! Identifiers and per-thread shard context.

use std::any::{Any, TypeId};
use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;
use std::rc::Rc;

use crate::set::ShardHandle;

/// The index of a shard within its [`ShardSet`](crate::ShardSet), `0..count`.
///
/// A distinct type (Redpanda's `named_type`) so a shard index is never confused with a core
/// number, a count or a hash.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ShardId(pub u16);

impl ShardId {
    /// The shard index as a `usize`, for indexing per-shard arrays.
    pub fn index(self) -> usize {
        usize::from(self.0)
    }
}

impl fmt::Display for ShardId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "shard-{}", self.0)
    }
}

/// What code running on a shard thread can learn about where it runs.
#[derive(Clone, Debug)]
pub struct ShardContext {
    id: ShardId,
    count: usize,
    handle: ShardHandle,
}

thread_local! {
    static CONTEXT: RefCell<Option<ShardContext>> = const { RefCell::new(None) };
    /// Shard-local services, one per type (see [`local`]).
    static LOCALS: RefCell<HashMap<TypeId, Rc<dyn Any>>> = RefCell::new(HashMap::new());
}

impl ShardContext {
    pub(crate) fn new(id: ShardId, count: usize, handle: ShardHandle) -> Self {
        Self { id, count, handle }
    }

    /// The context of the calling thread, or `None` when it is not a shard thread.
    pub fn current() -> Option<ShardContext> {
        CONTEXT.with(|c| c.borrow().clone())
    }

    /// This shard's id.
    pub fn id(&self) -> ShardId {
        self.id
    }

    /// How many shards the set this shard belongs to has.
    pub fn count(&self) -> usize {
        self.count
    }

    /// A handle to the set, to reach other shards.
    pub fn handle(&self) -> &ShardHandle {
        &self.handle
    }

    /// Installs `ctx` as this thread's context (shard threads only, once at start).
    pub(crate) fn install(ctx: ShardContext) {
        CONTEXT.with(|c| *c.borrow_mut() = Some(ctx));
    }

    /// Clears this thread's context, dropping its handle (shard threads, at exit).
    pub(crate) fn clear() {
        CONTEXT.with(|c| c.borrow_mut().take());
    }
}

/// Drops every shard-local service of this thread (shard threads, at exit, while the runtime
/// still exists).
pub(crate) fn clear_locals() {
    let all = LOCALS.with(|l| std::mem::take(&mut *l.borrow_mut()));
    drop(all);
}

/// Installs `value` as this shard's instance of `T` (replacing an earlier one), Seastar's
/// `sharded<T>`: each shard holds its own, `!Send` allowed. Usually called through
/// [`ShardHandle::install_local`](crate::ShardHandle::install_local). Returns `false` (and
/// installs nothing) off shard threads.
pub fn set_local<T: 'static>(value: T) -> bool {
    if current_shard().is_none() {
        return false;
    }
    LOCALS.with(|l| {
        l.borrow_mut()
            .insert(TypeId::of::<T>(), Rc::new(value) as Rc<dyn Any>)
    });
    true
}

/// This shard's instance of `T`, if one was installed (`None` off shard threads).
pub fn local<T: 'static>() -> Option<Rc<T>> {
    let any = LOCALS.with(|l| l.borrow().get(&TypeId::of::<T>()).cloned())?;
    any.downcast::<T>().ok()
}

/// The id of the shard the calling thread runs, or `None` off shard threads.
pub fn current_shard() -> Option<ShardId> {
    CONTEXT.with(|c| c.borrow().as_ref().map(|c| c.id))
}
